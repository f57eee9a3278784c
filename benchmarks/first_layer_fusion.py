"""Prototype: small_cnn's first convolution as one wide matmul over all members' filters.

  python benchmarks/first_layer_fusion.py [--members=48] [--steps=20] [--repeats=5] [--chunks=4]

With shared batches every member's first layer reads the same input, so its im2col patches can be
built once and its forward pass be one [B*H*W, 25] x [25, K*8] matmul (and its kernel gradient one
[25, B*H*W] x [B*H*W, K*8]) instead of K/chunk narrow ones inside the member loop. The rest of the
network stays member-mapped in chunks (population.member_map). Both variants run the same Adam
training (a `lax.scan` of --steps steps, the update vmapped over members), timed interleaved,
--repeats times (medians). First checks that the fused loss and gradients equal lrlab's model's.
Two fused layouts:
  fused      the wide output as NHWC [B, H, W, K*F] (what vmap's own layout would give)
  fused_cf   the wide output channels-first [K*F, B*H*W]: the kernel gradient is then a plain
             [K*F, N] x [N, 25] matmul of the layout the pool's gradient produces
  fused_vjp  NHWC, the backward written by hand (added after the first two missed, see below)
Prints a table and writes benchmarks/results/first_layer_fusion-<backend>.json.

Predicted before measuring (profile_segment, K=48, 20-step segment, 303 ms per population step on
a shared 2-core VM under load): the first layer's forward matmul takes 6.1 ms (2%) and its kernel-
gradient matmul 12.6 ms (4%), but a layout copy of its output gradient to [32, 19600] per chunk
before that matmul takes 66.9 ms (22%); its pool and ReLU passes (~51 ms, 17%) are elementwise
and do the same work fused or not.
  fused:    the two matmuls as one wide call each save ~40% of 18.7 ms (the shared patches read
            once, not 12 times); the layout copy stays (same bytes, same pattern); new transposes
            of the pooled [B,7,7,K,8] <-> [K,B,7,7,8] (7.5 MB, forward and backward) add ~3 ms.
            Net ~ -4 ms of 303: 1.01x, below what this machine can resolve.
  fused_cf: the copy goes (the gradient arrives in the matmul's layout): -67 ms, -7 ms of
            matmuls, +5 ms of transposes of the pooled tensor: ~303 -> ~234 ms, 1.3x.
Measured (K=48, 5 rounds): fused 0.59x, fused_cf 0.56x. Why, from a profile of each: (1) with the
gradient taken outside the member loop, the rest of the network is differentiated through
`lax.map`, which stacks every chunk's residuals (layer 2's patches, [12, 4, 100, 6, 6, 72]) in
memory for the backward scan (~70 ms of broadcasts and dynamic-update-slices), where lrlab takes
value_and_grad inside each chunk and keeps them in cache; (2) fused: the layout copy of the output
gradient grew from 82 ms (12 x [32, 19600], each chunk's 2.5 MB in L2) to 157 ms ([384, 19600]);
fused_cf: the copy went, but the max-pool gradient's tie count over the strided [K, F, B, 7, 2, 7, 2]
layout took 149 ms. Then, predicted for
  fused_vjp: the rest's value and gradients inside each chunk (no stacked residuals), the kernel
            gradient as patches^T @ dH (the copy falls on the 2 MB patches, not the 30 MB dH): in
            the same profile's terms (chunked 348 ms), -93 ms of copy and kernel-gradient matmul,
            +15 ms for the wide NN matmul, +28 ms of [B,7,7,K,8] <-> [K,B,7,7,8] transposes, the
            pool passes unchanged (~50 ms either way): ~298 ms, 1.15x.
Measured (K=48, 5 interleaved rounds, --variants=fused_vjp): 1.25x (rounds 1.09-1.31x). Losses
equal to 5e-7; gradients equal to ~1e-8 except in a member or two where one near-tied 2x2 max-pool
window breaks the other way under the other summation order (all three fused variants agree with
each other there). Not landed in lrlab: it holds only for shared batches without augmentation, and
needs the model split into its first conv block and the rest (the engine sees one opaque apply).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import benchmark_data, write_results
from absl import app, flags

from lrlab.engine import member_map
from lrlab.optim import optimizers
from lrlab.task import augment, classification, conv, models

flags.DEFINE_integer("members", 48, "Population size K.")
flags.DEFINE_integer("steps", 20, "Steps per timed segment.")
flags.DEFINE_integer("repeats", 5, "Interleaved repetitions (medians).")
flags.DEFINE_list("chunks", ["4"], "Members per chunk of the member loop (the CPU default for small_cnn is 4).")
flags.DEFINE_list("variants", ["fused", "fused_cf", "fused_vjp"], "Fused variants to time against 'chunked'.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/first_layer_fusion-<backend>.json).")
FLAGS = flags.FLAGS

BATCH = 100


def lrlab_loss(model):
    """One member's mean cross-entropy with lrlab's model (the reference and the 'chunked' variant)."""
    def loss(params, x, y):
        return classification.cross_entropy(model.apply({"params": params}, x), y).mean()
    return loss


def rest_loss(params, z_BHWC, y):
    """small_cnn after its first conv block: conv 3x3 -> ReLU -> pool -> dense, as lrlab computes it."""
    pooled_hw = tuple(n // 2 * 2 for n in z_BHWC.shape[1:3])
    z = conv.conv2d_same(z_BHWC, params["Conv_1"]["kernel"], conv.MATMUL, pooled_hw)
    z = nn_relu(conv.max_pool_2x2(z) + params["Conv_1"]["bias"])
    logits = z.reshape(z.shape[0], -1) @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    return classification.cross_entropy(logits, y).mean()


nn_relu = jax.nn.relu


def fused_grads(k: int, chunk: int):
    """grads_K of every member's loss, the first conv block computed once for all K members."""
    def loss_sum(params_K, x_BHWC, y):
        x = conv.max_pool_2x2(x_BHWC)  # small_cnn pools its input
        kernel = params_K["Conv_0"]["kernel"]  # [K, kh, kw, 1, F]
        kh, kw, c_in, f = kernel.shape[1:]
        wide_hwio = jnp.moveaxis(kernel, 0, -2).reshape(kh, kw, c_in, k * f)  # output channel = member * F + f
        _, h, w, _ = x.shape
        pooled = conv.max_pool_2x2(conv.conv2d_same(x, wide_hwio, conv.MATMUL, (h // 2 * 2, w // 2 * 2)))
        b, ph, pw, _ = pooled.shape
        z_KBHWF = jnp.moveaxis(pooled.reshape(b, ph, pw, k, f), 3, 0)
        z_KBHWF = nn_relu(z_KBHWF + params_K["Conv_0"]["bias"][:, None, None, None, :])
        rest_K = {name: v for name, v in params_K.items() if name != "Conv_0"}
        losses_K = member_map.member_map(rest_loss, (0, 0, None), k, chunk)(rest_K, z_KBHWF, y)
        return losses_K.sum(), losses_K

    return jax.grad(loss_sum, has_aux=True)


def shared_patches(x_BHWC, kernel_K):
    """small_cnn's pooled input as im2col patches [B*H*W, kh*kw] (built once for all members, as
    lrlab's im2col convolution builds them: an identity kernel picks them out exactly), and (B, H, W)
    of the conv outputs its 'valid' pool reads."""
    x = conv.max_pool_2x2(x_BHWC)  # small_cnn pools its input
    kh, kw, c_in, _ = kernel_K.shape[1:]
    p = kh * kw * c_in
    b, h, w, _ = x.shape
    oh, ow = h // 2 * 2, w // 2 * 2
    return conv.conv2d_same(x, jnp.eye(p).reshape(kh, kw, c_in, p), conv.MATMUL, (oh, ow)).reshape(-1, p), (b, oh, ow)


def fused_cf_grads(k: int, chunk: int):
    """As fused_grads, the wide first-layer output channels-first: [K*F, B*H*W]."""
    def loss_sum(params_K, x_BHWC, y):
        kernel = params_K["Conv_0"]["kernel"]  # [K, kh, kw, 1, F]
        patches_NP, (b, oh, ow) = shared_patches(x_BHWC, kernel)
        p, f = patches_NP.shape[1], kernel.shape[-1]
        kernel_MP = jnp.moveaxis(kernel.reshape(k, p, f), 2, 1).reshape(k * f, p)  # row = member * F + f
        h_MN = kernel_MP @ patches_NP.T
        pooled = h_MN.reshape(k, f, b, oh // 2, 2, ow // 2, 2).max(axis=(4, 6))  # [K, F, B, H/2, W/2]
        z_KBHWF = jnp.moveaxis(pooled, 1, -1)
        z_KBHWF = nn_relu(z_KBHWF + params_K["Conv_0"]["bias"][:, None, None, None, :])
        rest_K = {name: v for name, v in params_K.items() if name != "Conv_0"}
        losses_K = member_map.member_map(rest_loss, (0, 0, None), k, chunk)(rest_K, z_KBHWF, y)
        return losses_K.sum(), losses_K

    return jax.grad(loss_sum, has_aux=True)


def fused_vjp_grads(k: int, chunk: int):
    """The first layer wide (NHWC) with a hand-written backward, the rest's value and gradients
    (parameters and input) computed inside each chunk as lrlab does (its residuals stay per chunk),
    and the kernel gradient as patches^T @ dH, so the layout copy falls on the 2 MB patches."""
    def grads(params_K, x_BHWC, y):
        kernel, bias = params_K["Conv_0"]["kernel"], params_K["Conv_0"]["bias"]  # [K, kh, kw, 1, F], [K, F]
        patches_NP, (b, oh, ow) = shared_patches(x_BHWC, kernel)
        p, f = patches_NP.shape[1], kernel.shape[-1]
        wide_PM = jnp.moveaxis(kernel.reshape(k, p, f), 0, 1).reshape(p, k * f)  # column = member * F + f
        h_BHWM = (patches_NP @ wide_PM).reshape(b, oh, ow, k * f)
        pooled, pool_vjp = jax.vjp(conv.max_pool_2x2, h_BHWM)
        z_pre = jnp.moveaxis(pooled.reshape(b, oh // 2, ow // 2, k, f), 3, 0) + bias[:, None, None, None, :]
        rest_K = {name: v for name, v in params_K.items() if name != "Conv_0"}
        rest_grads = lambda prm, z, y: jax.value_and_grad(rest_loss, argnums=(0, 1))(prm, z, y)
        loss_K, (g_rest, dz) = member_map.member_map(rest_grads, (0, 0, None), k, chunk)(rest_K, nn_relu(z_pre), y)
        dz_pre = jnp.where(z_pre > 0, dz, 0.0)
        (dh,) = pool_vjp(jnp.moveaxis(dz_pre, 0, 3).reshape(pooled.shape))
        d_wide_PM = patches_NP.T @ dh.reshape(-1, k * f)
        d_kernel = jnp.moveaxis(d_wide_PM.reshape(p, k, f), 1, 0).reshape(kernel.shape)
        return {"Conv_0": {"bias": dz_pre.sum(axis=(1, 2, 3)), "kernel": d_kernel}, **g_rest}, loss_K

    return grads


FUSED = {"fused": fused_grads, "fused_cf": fused_cf_grads, "fused_vjp": fused_vjp_grads}


def chunked_grads(model, k: int, chunk: int):
    """grads_K as lrlab computes them today: value_and_grad per member, members mapped in chunks."""
    def one(params, x, y):
        loss, g = jax.value_and_grad(lrlab_loss(model))(params, x, y)
        return g, loss
    return member_map.member_map(one, (0, None, None), k, chunk)


def make_segment(grads_fn, steps: int):
    """lax.scan of `steps` Adam steps of K members on shared batches (indices given)."""
    tx = optimizers.get("adam").make_tx()

    @jax.jit
    def segment(params_K, opt_K, images, labels, idx_SB):
        def body(carry, idx):
            params_K, opt_K = carry
            grads_K, loss_K = grads_fn(params_K, augment.to_float(images[idx]), labels[idx])
            updates, opt_K = jax.vmap(tx.update)(grads_K, opt_K, params_K)
            return (optax.apply_updates(params_K, updates), opt_K), loss_K
        (params_K, opt_K), loss_SK = jax.lax.scan(body, (params_K, opt_K), idx_SB)
        return params_K, opt_K, loss_SK

    return segment


def check_equal(model, k: int, chunk: int, params_K, x, y) -> dict:
    """Per fused variant: largest differences from lrlab's per-member losses and gradients."""
    ref_g, ref_l = jax.jit(chunked_grads(model, k, chunk))(params_K, x, y)
    out = {}
    for name, make in FUSED.items():
        if name not in FLAGS.variants:
            continue
        g, losses = jax.jit(make(k, chunk))(params_K, x, y)
        rel = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref_g)))
        out[name] = {"loss_max_abs_diff": float(jnp.max(jnp.abs(losses - ref_l))), "grad_max_rel_diff": rel}
    return out


def main(argv):
    del argv
    k, steps = FLAGS.members, FLAGS.steps
    data = benchmark_data()
    images, labels = data.train["image"], data.train["label"]
    model = models.make_model("small_cnn", conv_impl="matmul")
    lrs = np.geomspace(1e-4, 1e-1, k)
    # distinct initial weights per member, so a mix-up of members would show in the check
    params_K = jax.vmap(lambda key: model.init(key, jnp.zeros((1, 28, 28, 1)))["params"])(
        jax.random.split(jax.random.PRNGKey(0), k))
    tx = optimizers.get("adam").make_tx()
    opt_K = jax.vmap(tx.init)(params_K)
    opt_K.hyperparams["learning_rate"] = jnp.asarray(lrs, jnp.float32)
    idx = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (steps, BATCH), 0, labels.shape[0]))
    rows = []
    for chunk in (int(c) for c in FLAGS.chunks):
        check = check_equal(model, k, chunk, params_K, augment.to_float(images[idx[0]]), labels[idx[0]])
        variants = {"chunked": make_segment(chunked_grads(model, k, chunk), steps),
                    **{name: make_segment(FUSED[name](k, chunk), steps) for name in FLAGS.variants}}
        compile_s, times, finals = {}, {v: [] for v in variants}, {}
        for name, seg in variants.items():
            start = time.perf_counter()
            finals[name] = jax.block_until_ready(seg(params_K, opt_K, images, labels, idx))
            compile_s[name] = time.perf_counter() - start
        for _ in range(FLAGS.repeats):
            for name, seg in variants.items():
                start = time.perf_counter()
                jax.block_until_ready(seg(params_K, opt_K, images, labels, idx))
                times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(t) * 1e3 / steps for name, t in times.items()}
        leaves = lambda name: jax.tree_util.tree_leaves(finals[name][0])
        for name in FLAGS.variants:
            check[name]["params_max_abs_diff_after_segment"] = max(
                float(jnp.max(jnp.abs(a - b))) for a, b in zip(leaves(name), leaves("chunked")))
        row = {"members": k, "chunk": chunk, "steps": steps, "ms_per_population_step": ms,
               "ms_each": {n: [t * 1e3 / steps for t in ts] for n, ts in times.items()},
               "speedup": {name: ms["chunked"] / ms[name] for name in FLAGS.variants}, "compile_s": compile_s,
               "equality": check}
        rows.append(row)
        print(f"K={k} chunk={chunk}: chunked {ms['chunked']:.1f} ms per population step", flush=True)
        for name in FLAGS.variants:
            c = check[name]
            print(f"  {name:<9} {ms[name]:.1f} ms ({row['speedup'][name]:.2f}x); "
                  f"loss diff {c['loss_max_abs_diff']:.1e}, gradient rel diff {c['grad_max_rel_diff']:.1e}, "
                  f"params after {steps} steps differ by {c['params_max_abs_diff_after_segment']:.1e}", flush=True)
    path = write_results("first_layer_fusion", {"rows": rows}, FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
