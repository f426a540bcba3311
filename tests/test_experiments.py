"""experiments/ (outside the package): the one rows x seeds runner (resume, N at a time, chains, failures; fake
run commands), the report's tables and verdicts on hand-made results (holds, does not hold, inconclusive,
inconclusive (budget), per-item bootstrap, relative thresholds), each system's rows and sections, the per-item
scores the evaluators save for it, and that the installed package never imports experiments/."""
import ast
import json
import os
import pathlib
import sys

import numpy as np
import pytest

from experiments import (
  classifier,
  mfsr,
  region_word,
  report,
  run,
  runner,
  single_stream,
  stats,
)
from experiments import metrics as exp_metrics
from experiments.experiment import (
  Claim,
  Convergence,
  Experiment,
  Row,
  Step,
  Table,
  run_dir,
)
from tests.helpers import REPO, load_config

# ---- the runner, with fake run commands (a python one-liner per run)
_FAKE = r"""
import json, os, sys, time
directory, log, seconds, value, fail = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
start = time.time()
time.sleep(seconds)
with open(log, "a") as f:
  f.write(json.dumps({"dir": directory, "start": start, "end": time.time()}) + "\n")
if fail == "1":
  sys.exit(3)
os.makedirs(directory, exist_ok=True)
with open(os.path.join(directory, "results.json"), "w") as f:
  json.dump({"metrics": {"test/score": value}}, f)
"""


def _fake(log, seconds=0.0, value=1.0, fail=False):
  return lambda context, directory: [sys.executable, "-c", _FAKE, directory, str(log), str(seconds),
                                     str(value + context.seed), "1" if fail else "0"]


def _fake_experiment(log, *, seconds=0.0, steps=None, rows=None, warmup=""):
  steps = steps or {"a": Step("a", command=_fake(log, seconds, 1.0)), "b": Step("b", command=_fake(log, seconds, 2.0))}
  rows = rows or {"a": Row("row A", step="a"), "b": Row("row B", step="b")}
  return Experiment(name="fake", title="fake", config="", rows=rows, steps=steps,
                    tables=(Table("t", (exp_metrics.plain("score", "test/score"),)),), warmup=warmup)


def _calls(log):
  return [json.loads(line) for line in open(log)] if os.path.exists(log) else []


def test_runner_runs_every_row_and_seed_once_and_resumes(tmp_path):
  log = tmp_path / "calls.jsonl"
  experiment = _fake_experiment(log)
  assert runner.run(experiment, str(tmp_path / "w"), ["a", "b"], [0, 1], log=lambda _: None) == 0
  dirs = sorted(c["dir"] for c in _calls(log))
  assert dirs == sorted(run_dir(str(tmp_path / "w"), s, k) for s in ("a", "b") for k in (0, 1))
  os.remove(os.path.join(run_dir(str(tmp_path / "w"), "b", 1), "results.json"))  # an unfinished run
  assert runner.run(experiment, str(tmp_path / "w"), ["a", "b"], [0, 1], log=lambda _: None) == 0
  assert len(_calls(log)) == 5 and _calls(log)[-1]["dir"] == run_dir(str(tmp_path / "w"), "b", 1)  # only it again
  assert os.path.exists(run_dir(str(tmp_path / "w"), "b", 1) + ".log")  # a log per run
  assert os.path.exists(run_dir(str(tmp_path / "w"), "b", 1) + ".command")  # and the command it ran
  other = _fake_experiment(log, steps={"a": Step("a", command=_fake(log, value=7.0)),
                                       "b": Step("b", command=_fake(log, value=2.0))})
  lines = []
  assert runner.run(other, str(tmp_path / "w"), ["a", "b"], [0], log=lines.append) == 0
  assert len(_calls(log)) == 5  # kept, but said: a finished run with other flags is not silently reused
  assert [line for line in lines if "a seed 0 finished earlier with other flags" in line]
  assert not [line for line in lines if "b seed 0 finished earlier" in line]


def test_runner_runs_n_at_a_time_and_waits_for_what_a_step_needs(tmp_path):
  log = tmp_path / "calls.jsonl"
  experiment = _fake_experiment(log, seconds=1.0)
  assert runner.run(experiment, str(tmp_path / "par"), ["a", "b"], [0, 1], parallel=4, log=lambda _: None) == 0
  calls = _calls(log)
  assert len(calls) == 4 and max(c["start"] for c in calls) < min(c["end"] for c in calls)  # all four at once
  chain = {"a": Step("a", command=_fake(log, 0.5)), "b": Step("b", command=_fake(log, 0.0), needs=("a",))}
  experiment = _fake_experiment(log, steps=chain)
  os.remove(log)
  assert runner.run(experiment, str(tmp_path / "chain"), ["b"], [0, 1], parallel=4, log=lambda _: None) == 0
  calls = {(pathlib.Path(c["dir"]).parent.name, pathlib.Path(c["dir"]).name): c for c in _calls(log)}
  for seed in ("seed0", "seed1"):
    assert calls[("b", seed)]["start"] >= calls[("a", seed)]["end"]  # the chain's order, per seed


def test_runner_warmup_runs_alone_first_and_a_failure_stops_what_needs_it(tmp_path, capsys):
  log = tmp_path / "calls.jsonl"
  experiment = _fake_experiment(log, seconds=0.3, warmup="b")
  assert runner.run(experiment, str(tmp_path / "w"), ["a", "b"], [0, 1], parallel=4, log=lambda _: None) == 0
  calls = _calls(log)
  first = min(calls, key=lambda c: c["start"])
  assert first["dir"] == run_dir(str(tmp_path / "w"), "b", 0)
  assert all(c["start"] >= first["end"] for c in calls if c is not first)
  steps = {"a": Step("a", command=_fake(log, fail=True)), "b": Step("b", command=_fake(log), needs=("a",))}
  experiment = _fake_experiment(log, steps=steps)
  assert runner.run(experiment, str(tmp_path / "f"), ["b"], [0], log=lambda _: None) == 1
  err = capsys.readouterr().err
  assert "a seed 0 failed (exit 3)" in err and "not run: b seed 0" in err

  def broken(context):
    raise FileNotFoundError("config file nowhere.py not found")
  experiment = _fake_experiment(log, steps={"a": Step("a", config="nowhere.py", flags=broken),
                                            "b": Step("b", command=_fake(log))})
  assert runner.run(experiment, str(tmp_path / "g"), ["a", "b"], [0], log=lambda _: None) == 1
  assert "a seed 0: its command could not be built: FileNotFoundError" in capsys.readouterr().err


def test_shared_steps_run_once_and_keep_their_config_seed(tmp_path):
  steps = {"judge": Step("judge", config="c.py:judge", per_seed=False, budget=False),
           "cap": Step("cap", config="c.py", needs=("judge",), flags=lambda c: [f"--config.judge={c.run('judge')}"])}
  experiment = Experiment(name="x", title="x", config="c.py", rows={"cap": Row("cap", step="cap")}, steps=steps,
                          tables=(), budget=("--config.train.num_steps=3",))
  jobs = runner.plan(experiment, ["cap"], [0, 1, 2])
  assert [k[:2] for k in jobs] == [("judge", 0), ("cap", 0), ("cap", 1), ("cap", 2)]
  context = runner.Context(experiment, "W", 2)
  judge = runner.command(experiment, "W", jobs[("judge", 0, "")], context, ["--config.x=1"])
  assert not any(a.startswith("--config.seed") for a in judge) and "--config.x=1" not in judge  # no budget
  cap = runner.command(experiment, "W", jobs[("cap", 2, "")], context, ["--config.x=1"])
  assert cap[-4:] == ["--config.seed=2", f"--config.judge={run_dir('W', 'judge', 0)}",
                      "--config.train.num_steps=3", "--config.x=1"]


def test_cli_refuses_bad_arguments_and_lists_experiments(capsys):
  assert run.main(["nosuch", "--workdir=/tmp/x"]) == 2 and "unknown experiment" in capsys.readouterr().err
  assert run.main(["mfsr:nosuch", "--workdir=/tmp/x"]) == 2 and "no variant" in capsys.readouterr().err
  assert run.main(["mfsr:tiny", "--workdir=/tmp/x", "--rows=zz"]) == 2 and "unknown rows" in capsys.readouterr().err
  assert run.main(["mfsr:tiny", "--workdir=/tmp/x", "--bogus"]) == 2
  assert run.main(["--list"]) == 0 and "captioning:tiny" in capsys.readouterr().out


# ---- the report's verdicts on hand-made runs
def _write_run(directory, metrics, *, items=None, split="test"):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "results.json"), "w") as f:
    json.dump({"metrics": metrics}, f)
  if items is not None:
    os.makedirs(os.path.join(directory, report.ITEMS_DIR), exist_ok=True)
    np.savez(os.path.join(directory, report.ITEMS_DIR, f"{split}.npz"), **items)


def _curves(monkeypatch, curves):
  """Validation curves by run directory's row name: {row: [values]} (steps 100, 200, ...)."""
  def history(directory, tag):
    del tag
    row = pathlib.Path(directory).parent.name
    return [(100 * (i + 1), v) for i, v in enumerate(curves.get(row, []))]
  monkeypatch.setattr(report, "scalar_history", history)


def _plain_experiment(claims, *, tolerance=1.0):
  return Experiment(name="hand", title="hand-made", config="c.py",
                    rows={"a": Row("A"), "b": Row("B"), "c": Row("C")},
                    tables=(Table("t", (exp_metrics.accuracy("test"), exp_metrics.plain("other", "test/other"))),),
                    claims=tuple(claims), convergence=Convergence(("val/accuracy",), tolerance))


def test_report_verdicts_known_zero_noisy_and_budget(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  n = 400
  truth = {"a": 0.9, "b": 0.6, "c": 0.9}
  for seed in (0, 1, 2):
    for row, p in truth.items():
      correct = rng.random(n) < p
      _write_run(run_dir(str(tmp_path), row, seed), {"test/accuracy": 100 * correct.mean(),
                                                     "test/other": {"a": 5.0, "b": 5.0, "c": 5.0}[row] + seed % 2},
                 items={"correct": correct})
  _curves(monkeypatch, {"a": [80, 90, 90.5], "b": [50, 60, 60.2], "c": [70, 80, 90]})  # c: not converged
  claims = [Claim("A beats B", "a", "b", "accuracy"), Claim("B beats A", "b", "a", "accuracy"),
            Claim("A beats B by 2 on other", "a", "b", "other", threshold=2.0),
            Claim("A beats C", "a", "c", "accuracy"), Claim("A above 80", "a", "", "accuracy", threshold=80.0)]
  text = report.write(_plain_experiment(claims), str(tmp_path), ["a", "b", "c"], [0, 1, 2])
  lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
  assert "**holds**" in lines["A beats B"] and "3 seeds x 400 images" in lines["A beats B"]
  assert "**does not hold**" in lines["B beats A"]
  assert "**does not hold**" in lines["A beats B by 2 on other"]  # a zero difference vs threshold 2: CI at 0
  assert "no per-item scores" in lines["A beats B by 2 on other"]
  assert "**inconclusive (budget)**" in lines["A beats C"]  # C's curve still moves by 10
  assert "**holds**" in lines["A above 80"]
  assert "3/3" in lines["A"] and "0/3 (not: 80.00 -> 90.00" in lines["C"]
  assert os.path.exists(tmp_path / "report.md")


def test_report_inconclusive_on_noise_says_what_would_narrow_it_and_names_missing_runs(tmp_path, monkeypatch):
  for seed, (a, b) in enumerate(((91.0, 90.0), (90.0, 91.5), (92.0, 91.0))):
    _write_run(run_dir(str(tmp_path), "a", seed), {"test/accuracy": a})
    _write_run(run_dir(str(tmp_path), "b", seed), {"test/accuracy": b})
  _curves(monkeypatch, {"a": [1, 1], "b": [1, 1]})
  text = report.write(_plain_experiment([Claim("A beats B", "a", "b", "accuracy"),
                                         Claim("A beats C", "a", "c", "accuracy")]),
                      str(tmp_path), ["a", "b", "c"], [0, 1, 2])
  line = next(x for x in text.splitlines() if x.startswith("| A beats B"))
  assert "**inconclusive**" in line and "seeds (now 3)" in line and "+1.00 / -1.50 / +1.00 (2/3 > thr.)" in line
  assert "Not finished (left out of the cells): c (seeds [0, 1, 2])" in text
  assert "not measured" in next(x for x in text.splitlines() if x.startswith("| A beats C"))


def test_report_bootstraps_over_items_when_seeds_alone_cannot_tell(tmp_path, monkeypatch):
  """Two seeds that agree exactly and 1,000 items: over seeds alone the CI is a point; over items it is not."""
  rng = np.random.default_rng(1)
  base = rng.random(1000) < 0.5
  better = base | (rng.random(1000) < 0.02)  # ~1 point better, on the same items
  for seed in (0, 1):
    _write_run(run_dir(str(tmp_path), "a", seed), {"test/accuracy": 100 * better.mean()}, items={"correct": better})
    _write_run(run_dir(str(tmp_path), "b", seed), {"test/accuracy": 100 * base.mean()}, items={"correct": base})
  _curves(monkeypatch, {"a": [1, 1], "b": [1, 1]})
  data = report.read(_plain_experiment([]), str(tmp_path), ["a", "b"], [0, 1])
  judged = report.judge(data, Claim("A beats B", "a", "b", "accuracy", threshold=0.0))
  c = judged.comparison
  assert c.items == 1000 and c.low < c.estimate < c.high and c.estimate == pytest.approx(100 * (better.mean() - base.mean()))
  assert c.verdict == stats.HOLDS


def test_relative_threshold_is_a_fraction_of_b(tmp_path, monkeypatch):
  for seed in (0, 1, 2):
    _write_run(run_dir(str(tmp_path), "a", seed), {"test/accuracy": 103.0 + 0.1 * seed})
    _write_run(run_dir(str(tmp_path), "b", seed), {"test/accuracy": 100.0 + 0.1 * seed})
  _curves(monkeypatch, {"a": [1, 1], "b": [1, 1]})
  data = report.read(_plain_experiment([]), str(tmp_path), ["a", "b"], [0, 1, 2])
  judged = report.judge(data, Claim("5% better", "a", "b", "accuracy", threshold=0.05, relative=True))
  assert judged.comparison.verdict == stats.DOES_NOT_HOLD and "+5% of B" in judged.threshold
  assert judged.comparison.threshold == pytest.approx(5.005)


# ---- per-item retrieval scores: their mean is the split's metric
def test_retrieval_item_scores_average_to_the_metrics():
  from xmodal_jax.evaluation import retrieval
  rng = np.random.default_rng(0)
  images, texts = rng.normal(size=(30, 8)), rng.normal(size=(150, 8))
  text_to_image = np.repeat(np.arange(30), 5)
  texts[::2] = images[text_to_image[::2]] + 0.3 * texts[::2]
  i2t, t2i = retrieval.retrieval_ranks(images, texts, text_to_image)
  expected = retrieval.retrieval_metrics(images, texts, text_to_image)
  assert expected == retrieval.metrics_from_ranks(i2t, t2i)
  items = {"i2t_rank": i2t, "t2i_rank": t2i, "text_to_image": text_to_image}
  for key in ("i2t_r1", "t2i_r5", "rsum"):
    assert exp_metrics.retrieval_item_scores(items, key).mean() == pytest.approx(expected[key])
  mean_r1 = exp_metrics.retrieval_item_scores(items, "mean_r1").mean()
  assert mean_r1 == pytest.approx((expected["i2t_r1"] + expected["t2i_r1"]) / 2)


def test_the_retrieval_and_classification_evaluators_keep_items_and_the_trainer_saves_them(tmp_path):
  from xmodal_jax.evaluation import evaluator as evaluator_lib
  from xmodal_jax.train import trainer

  class Runtime:
    def map_batches(self, fn, variables, arrays, batch_size):
      del batch_size
      return fn(variables, **arrays)

  rng = np.random.default_rng(0)
  images, texts = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
  data = evaluator_lib.EvalData(image_inputs={"x": images}, text_inputs={"x": texts},
                                text_to_image=np.repeat(np.arange(6), 2), labels=np.array([0, 1, -1, 1, 0, 1]))
  fns = {"embed_image": lambda v, x: x, "embed_text": lambda v, x: x, "classify": lambda v, x: x[:, :2]}
  retrieval_eval = evaluator_lib.create("test", evaluator_lib.evaluator_config("retrieval", split="test"))
  metrics = retrieval_eval.evaluate(fns, {}, data, Runtime())
  items = retrieval_eval.items
  assert items["i2t_rank"].shape == (6,) and items["t2i_rank"].shape == (12,)
  assert exp_metrics.retrieval_item_scores(items, "rsum").mean() == pytest.approx(metrics["rsum"])
  classify = evaluator_lib.create("cls", evaluator_lib.evaluator_config("classification", split="test"))
  accuracy = classify.evaluate(fns, {}, data, Runtime())["accuracy"]
  assert classify.items["correct"].shape == (5,) and 100 * classify.items["correct"].mean() == pytest.approx(accuracy)
  trainer.save_items(str(tmp_path), [retrieval_eval, classify])
  with np.load(tmp_path / trainer.ITEMS_DIR / "test.npz") as saved:
    np.testing.assert_array_equal(saved["t2i_rank"], items["t2i_rank"])
  assert (tmp_path / trainer.ITEMS_DIR / "cls.npz").exists() and report.ITEMS_DIR == trainer.ITEMS_DIR


# ---- the systems' experiments
def test_mfsr_rows_and_table(tmp_path, monkeypatch):
  assert mfsr.row_flags("vsepp", ["recon"])[:1] == ["--config.model.separation.enabled=False"]
  assert "--config.evals.recon.at_end=False" in mfsr.row_flags("mo_sp_cap", ["recon"])
  assert "--config.loss_weights.image=1.0" in mfsr.row_flags("full", ["recon"])
  assert not any("recon" in f for f in mfsr.row_flags("full", ["recon"]))
  for row, base in (("vsepp", 10.0), ("full", 20.0)):
    for seed, delta in ((0, -1.0), (1, 1.0)):
      metrics = {f"test/{m}": base + delta for m, _ in exp_metrics.RETRIEVAL}
      _write_run(run_dir(str(tmp_path), row, seed), dict(metrics, **{"test/rsum": base + delta}))
  _curves(monkeypatch, {"vsepp": [1, 1], "full": [1, 1]})
  text = report.write(mfsr.get_experiment("tiny"), str(tmp_path), ["vsepp", "full"], [0, 1])
  lines = [line for line in text.splitlines() if line.startswith("| ")]
  assert "VSE++" in lines[1] and "10.0 ± 1.4" in lines[1]
  assert "full mFSR" in lines[2] and "20.0 ± 1.4" in lines[2]
  claim = next(line for line in lines if line.startswith("| full mFSR beats VSE++"))
  assert "+10.00 / +10.00" in claim and "+10.00 [+10.00, +10.00]" in claim and "**holds**" in claim  # paired


def test_region_word_rows_claims_table_and_robustness_evaluations(tmp_path, monkeypatch):
  config = load_config("configs/retrieval/region_word_shapes.py:tiny")
  experiment = region_word.get_experiment("shapes")
  context = runner.Context(experiment, str(tmp_path), 0, {experiment.config: config})
  vsepp = runner.resolve(experiment.rows["vsepp"].flags, context)
  assert "--config.similarity.weights.entity=0.0" in vsepp and "--config.model.global_pool=image" in vsepp
  assert "--config.evals.tags.at_end=False" in vsepp and runner.resolve(experiment.rows["full"].flags, context) == []
  runs = {"vsepp": [dict(zip(("test/i2t_r1", "test/t2i_r1", "composition/accuracy"), v)) for v in ((50, 30, 55),
                                                                                                   (52, 32, 57))],
          "full": [{"test/i2t_r1": 90, "test/t2i_r1": 80, "composition/accuracy": 80, "tags/micro_f1": 93},
                   {"test/i2t_r1": 92, "test/t2i_r1": 82, "composition/accuracy": 82, "tags/micro_f1": 95}]}
  for row, per_seed in runs.items():
    for seed, metrics in enumerate(per_seed):
      _write_run(run_dir(str(tmp_path), row, seed), metrics)
  with open(run_dir(str(tmp_path), "full", 0) + ".jitter20.json", "w") as f:
    json.dump({"test/i2t_r1": 80, "test/t2i_r1": 70}, f)
  _curves(monkeypatch, {})
  text = report.write(experiment, str(tmp_path), ["vsepp", "full", "full@jitter20"], [0, 1])
  table = [line for line in text.splitlines() if line.startswith(("| VSE++ (global)", "| full S2"))]
  claims_row = next(line for line in table if "41.0 ± 1.4" in line)
  assert "–" in claims_row  # no tag head: no F1
  assert any("86.0 ± 1.4" in line and "94.0 ± 1.4" in line for line in table)
  assert "75.0 ± 0.0 (1/2 seeds)" in next(x for x in text.splitlines() if x.startswith("| full S2, boxes jittered"))
  assert report.mean_std([1.0, 3.0], signed=True) == "+2.0 ± 1.4"
  assert "**inconclusive (budget)**" in next(x for x in text.splitlines() if x.startswith("| full S2 beats VSE++"))
  jobs = runner.plan(experiment, ["full@jitter20"], [0])
  assert list(jobs) == [("full", 0, ""), ("full", 0, "jitter20")]
  argv = runner.command(experiment, str(tmp_path), jobs[("full", 0, "jitter20")], context, [])
  assert argv[3] == "eval" and "--config.regions.eval_jitter=0.2" in argv and argv[-1] == "--split=test"


def test_single_stream_convergence_steps_merged_evaluations_and_claims(tmp_path, monkeypatch):
  experiment = single_stream.get_experiment("shapes")
  r1 = {"coarse": 60.0, "token": 55.0, "random_objects": 61.0, "library": 58.0}
  for row in single_stream.ROWS:
    for seed in (0, 1):
      metrics = {f"test/{k}": 1.0 for k, _ in exp_metrics.RETRIEVAL}
      metrics.update({"test/i2t_r1": r1[row] + seed, "test/t2i_r1": r1[row] - seed,
                      "test_masked/words_span_accuracy": 50.0, "test_masked/words_token_accuracy": 40.0,
                      "test_masked/objects_accuracy": 30.0})
      _write_run(run_dir(str(tmp_path), row, seed), metrics)
  curves = {"coarse": [(100, 20.0), (200, 40.0), (300, 50.0)], "token": [(100, 10.0), (200, 30.0), (300, 45.0)]}
  monkeypatch.setattr(report, "scalar_history",
                      lambda directory, tag: curves.get(pathlib.Path(directory).parent.name, []))
  data = report.read(experiment, str(tmp_path), list(single_stream.ROWS), [0, 1])
  # both protocols share the curve here: target = min(final) = 45; coarse reaches it at 300, token at 300
  table, coarse_steps, token_steps = single_stream.convergence_steps(data)
  assert coarse_steps == {0: 300, 1: 300} and token_steps == {0: 300, 1: 300} and "45.00" in table
  curves["token"] = [(100, 10.0), (200, 30.0), (300, 55.0)]  # token ends higher: target 50, coarse at 200, token 300
  curves["coarse"] = [(100, 20.0), (200, 50.0), (300, 50.0)]
  curves["library"] = [(100, 30.0), (200, 49.5), (300, 50.0)]  # converged (within 1.0)
  data = report.read(experiment, str(tmp_path), list(single_stream.ROWS), [0])
  _, coarse_steps, token_steps = single_stream.convergence_steps(data)
  assert coarse_steps == {0: 200} and token_steps == {0: 300}
  with open(run_dir(str(tmp_path), "coarse", 0) + ".fold.json", "w") as f:  # a later evaluation
    json.dump({"test_full100/i2t_r1": 5.0, "test/i2t_r1": 0.0}, f)
  with open(run_dir(str(tmp_path), "coarse", 0) + ".command", "w") as f:  # what the runner keeps beside a log
    json.dump(["-m", "xmodal_jax.main", "train"], f)
  merged = report.read(experiment, str(tmp_path), ["coarse"], [0]).runs["coarse"][0].metrics
  assert merged["test_full100/i2t_r1"] == 5.0 and merged["test/i2t_r1"] == 60.0  # added, never overriding
  text = report.write(experiment, str(tmp_path), list(single_stream.ROWS), [0, 1])
  lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
  assert "+5.00 / +5.00" in lines["coarse masking's mean R@1 beats single-token masking's"]
  assert "**does not hold**" in lines["the seed library does not lower mean R@1 (by more than 1 point)"]
  assert "-2.00 [-2.00, -2.00]" in lines["the seed library does not lower mean R@1 (by more than 1 point)"]
  assert "+60.50 [+60.00, +61.00]" in lines["shapes test i->t R@1 by matching score > 50"]  # A alone (B = 0)
  assert "**holds**" in lines["shapes test i->t R@1 by matching score > 50"]
  assert "+100.00 / +100.00" in lines["coarse masking reaches the target in fewer steps than single-token masking"]


def _s1_run(root, seed, pixel, text, fusion):
  for stage, acc in (("pixel_only", pixel), ("text_only", text), ("fusion", fusion)):
    _write_run(os.path.join(run_dir(str(root), "pipeline", seed), stage),
               {"test/accuracy": acc, "test/mean_class_accuracy": acc - 1.0})


def test_s1_seed_claim_paired_difference_mean_std_and_sign_count(tmp_path, monkeypatch):
  _s1_run(tmp_path, 0, 90.0, 30.0, 91.0)
  _s1_run(tmp_path, 1, 92.0, 31.0, 92.5)
  _s1_run(tmp_path, 2, 91.0, 29.0, 90.5)
  stage_curves = {"fusion": [(1, 90.0), (2, 90.0)], "pixel_only": [(1, 90.0), (2, 90.0)]}
  monkeypatch.setattr(report, "scalar_history",  # read from the stage's own directory
                      lambda directory, tag: stage_curves.get(pathlib.Path(directory).name, []))
  experiment = classifier.get_experiment("shapes")
  text = report.write(experiment, str(tmp_path), list(experiment.rows), [0, 1, 2])
  assert "91.00 ± 1.00" in text                            # pixel only: mean 91, sd 1 (ddof=1)
  line = next(x for x in text.splitlines() if x.startswith("| text + pixel beats pixel only "))
  assert "+1.00 / +0.50 / -0.50 (2/3 > thr.)" in line      # fusion - pixel, per seed; seeds favouring fusion
  c = stats.compare([1.0, 0.5, -0.5], [0.0, 0.0, 0.0])
  assert f"{c.estimate:+.2f} [{c.low:+.2f}, {c.high:+.2f}]" in line and "+0.33" in line  # the mean difference
  assert "**inconclusive**" in line and "no per-item scores" in line


def test_s1_an_unfinished_stage_is_named(tmp_path, monkeypatch):
  _s1_run(tmp_path, 0, 90.0, 30.0, 91.0)
  _curves(monkeypatch, {})
  experiment = classifier.get_experiment("shapes")
  text = report.write(experiment, str(tmp_path), list(experiment.rows), [0, 1])
  assert "Not finished (left out of the cells): pixel_only (seeds [1]); text_only (seeds [1]); fusion (seeds [1])" in text
  jobs = runner.plan(experiment, list(experiment.rows), [0, 1])
  assert [runner.is_done(experiment, str(tmp_path), j) for j in jobs.values()] == [False, False]  # no stage_done
  for stage in ("pixel_only", "text_only", "fusion"):
    open(os.path.join(run_dir(str(tmp_path), "pipeline", 0), stage, "stage_done.json"), "w").close()
  assert runner.is_done(experiment, str(tmp_path), jobs[("pipeline", 0, "")])


def test_every_experiment_builds_and_names_real_metrics():
  for name, module in run.EXPERIMENTS.items():
    for variant in __import__(module, fromlist=["VARIANTS"]).VARIANTS:
      experiment = run.get(f"{name}:{variant}")
      for claim in experiment.claims:
        experiment.metric(claim.metric)
        assert claim.a in experiment.rows and (not claim.b or claim.b in experiment.rows), (name, variant, claim)
      jobs = runner.plan(experiment, list(experiment.default_rows or experiment.rows), list(experiment.seeds))
      assert jobs and all(os.path.exists(os.path.join(REPO, (experiment.step(j.step).config or experiment.config)
                                                      .partition(":")[0]))
                          for j in jobs.values() if experiment.step(j.step).command is None)


def test_the_installed_package_never_imports_experiments():
  offenders = []
  for path in sorted(pathlib.Path(REPO, "xmodal_jax").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      offenders += [f"{path.relative_to(REPO)}:{node.lineno}" for n in names if n.split(".")[0] == "experiments"]
  assert not offenders, offenders
