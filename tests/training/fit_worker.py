"""A small training run for the kill-and-resume tests (run as a subprocess).

    python fit_worker.py FOLDER STEPS [KILL_AT [WHERE]]

trains a tiny EDM-preconditioned MLP on Gaussian data with kj.fit, checkpointing every 4
steps into FOLDER, and writes FOLDER/final.npz (the final parameters and losses). With
KILL_AT it SIGKILLs itself at step KILL_AT: WHERE="step" before that step's batch,
"write" in the middle of writing that step's checkpoint (temporary file written, not yet
renamed).
"""

import os
import signal
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import karras_jax as kj
import karras_jax.training.checkpoint as checkpoint_module


def main():
    global folder, steps, kill_at, where
    folder, steps = sys.argv[1], int(sys.argv[2])
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    where = sys.argv[4] if len(sys.argv) > 4 else "step"


    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, c_noise):
            h = jnp.concatenate([x, jnp.broadcast_to(c_noise.reshape(-1, 1), (x.shape[0], 1))], -1)
            return nn.Dense(2)(nn.silu(nn.Dense(32)(h)))


    net = Net()
    params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    apply_fn = kj.precondition(lambda p, x, c, cond: net.apply(p, x, c), "edm")
    optimizer = optax.adam(1e-2)
    step_fn = kj.make_train_step(lambda p, b, k: kj.edm_loss(apply_fn, p, b, k), optimizer)
    data = np.random.default_rng(0).normal(0.5, 0.3, (64, 2)).astype(np.float32)


    def batch_at(step):
        if where == "step" and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        order = np.random.default_rng([1, step // 4]).permutation(64)
        return jnp.asarray(data[order[(step % 4) * 16:(step % 4 + 1) * 16]])


    if where == "write":
        real_write = checkpoint_module.atomic_write

        def dying_write(path, write):
            def partial_then_die(f):
                write(f)
                f.flush()
                if checkpoint_module.load_position_hint == kill_at:  # the checkpoint of step kill_at
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_write(path, partial_then_die)

        real_save = checkpoint_module.save_checkpoint

        def save(folder, state, *, position, key, metadata=None):
            checkpoint_module.load_position_hint = position
            return real_save(folder, state, position=position, key=key, metadata=metadata)

        checkpoint_module.atomic_write = dying_write
        import karras_jax.training.loop as loop_module
        loop_module.save_checkpoint = save

    run = kj.fit(step_fn, kj.TrainState.create(params, optimizer), batch_at, jax.random.key(7), steps,
                 folder=folder, checkpoint_every=4, metadata={"test": 1}, progress=False)
    leaves = jax.tree_util.tree_leaves((run.state.params, run.state.ema, run.state.opt_state))
    np.savez(os.path.join(folder, "final.npz"), *[np.asarray(x) for x in leaves], losses=run.losses,
             resumed_from=run.resumed_from)


if __name__ == "__main__":
    main()
