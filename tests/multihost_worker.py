"""One process of a multi-process CPU run (used by tests/test_multihost.py; not a test itself).

  python -m tests.multihost_worker --process_id=0 --num_processes=2 --port=P --workdir=W [--devices=2]

Trains the tiny VSE++ config with the real trainer and prints one JSON line: step, final test metrics and a
checksum of the parameters (and, with --export_to=DIR, the summary of exporting the val split there).
"""
import argparse
import json
import os
import sys


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--devices", type=int, default=2)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--stop_at_step", type=int, default=None)
  parser.add_argument("--export_to", default=None, help="then `xmodal export` the val split there (all processes)")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}").strip()
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if args.num_processes > 1:  # the command line's path: --multihost with the explicit coordinator flags
    from xmodal_jax import main as cli
    cli.FLAGS(["xmodal", "--multihost", f"--coordinator_address=127.0.0.1:{args.port}",
               f"--num_processes={args.num_processes}", f"--process_id={args.process_id}"])
    cli._init_distributed()  # pylint: disable=protected-access
  import numpy as np
  from tests.helpers import load_config, make_task
  from xmodal_jax.train import trainer
  config = load_config("configs/retrieval/vsepp_shapes.py:tiny", "--config.train.num_steps=4",
                       "--config.evals.val.every=0", "--config.train.checkpoint_every=2")
  results = trainer.train_and_evaluate(make_task(config, args.workdir), stop_at_step=args.stop_at_step)
  params = jax.tree.leaves(results["state"].params)
  checksum = float(sum(np.abs(np.asarray(p, np.float64)).sum() for p in params))
  exported = None
  if args.export_to and not results["stopped_early"]:
    from xmodal_jax import systems
    from xmodal_jax.serving import export
    exported = export.export_run(systems.run_task(args.workdir), args.export_to, split="val", shard_size=10)
  print("RESULT " + json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                                "devices": jax.device_count(), "step": results["step"],
                                "metrics": results.get("metrics"), "checksum": checksum,
                                "export": exported}), flush=True)


if __name__ == "__main__":
  main()
