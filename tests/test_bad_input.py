"""Every class of bad input in docs/bad-input.md: one clear line, exit code 2, nothing written.

Each case runs the real CLI (``python -m blackbox.cli run ... --out tmp/run``) on a tiny local
model, and checks the exact last line of stderr, the exit code and that no file appeared.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from blackbox.evals.data import blackbox_data_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A good vector file, and ``model``: a link to the shared tiny Llama dir (read-only)."""
    root = tmp_path_factory.mktemp("bad_input_assets")
    (root / "model").symlink_to(tiny_model_dir)
    torch.save(torch.ones(4, 64), root / "v.pt")
    return root


def _config(assets: Path, **top: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "bad",
        "model": {"name": str(assets / "model"), "device": "cpu"},
        "task": {"name": "bb_rotten_tomatoes", "search_size": 2, "heldout_size": 2},
        "space": {"layers": [0, 3], "vectors": [{"name": "v", "file": str(assets / "v.pt")}]},
        "strategy": {"name": "random", "population": 2},
        "budget": {"evaluations": 2},
    }
    cfg.update(top)
    return cfg


@dataclass(frozen=True)
class Parts:
    """An expected message by its stable parts: how it starts and fragments it contains (for a
    message that lists something that may grow, such as the offline tasks)."""

    start: str
    contains: tuple[str, ...] = ()


# Each case: (id, prepare(tmp, assets) -> (config dict or YAML text, extra CLI args, env),
#             the expected message after "blackbox: error: ", with {tmp} and {assets} filled in)
Case = tuple[str, Callable[[Path, Path], tuple[Any, list[str], dict[str, str]]], str | Parts]


def _set(*items: str) -> Callable[[Path, Path], tuple[Any, list[str], dict[str, str]]]:
    return lambda tmp, a: (_config(a), [f"--set={i}" for i in items], {})


def _missing_task(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    cfg = _config(a)
    del cfg["task"]
    return cfg, [], {}


def _python_tag(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    text = (
        yaml.safe_dump(_config(a)) + f"x: !!python/object/apply:os.system ['touch {tmp}/pwned']\n"
    )
    return text, [], {}


def _anchor_bomb(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    """2 KB of YAML whose setting expands to 10^9 items: refused without expanding it."""
    cfg = {k: v for k, v in _config(a).items() if k != "strategy"}
    chain = ["&a0 [x,x,x,x,x,x,x,x,x,x]"] + [
        f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)
    ]
    text = (
        yaml.safe_dump(cfg) + "strategy: {name: pso, settings: {c1: [" + ", ".join(chain) + "]}}\n"
    )
    return text, [], {}


def _vector_file(content: Callable[[Path], None], name: str = "vec.pt") -> Callable[..., Any]:
    def prep(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
        content(tmp / name)
        return _config(a), [f"--set=space.vectors=[{{name: v, file: {tmp / name}}}]"], {}

    return prep


def _control_vector(path: Path) -> None:
    from blackbox.search_spaces.steering.vector_files import write_control_vector

    write_control_vector({1: torch.ones(32)}, path)


def _sae_without_weights(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    (tmp / "sae").mkdir()
    (tmp / "sae" / "cfg.json").write_text('{"d_in": 64, "d_sae": 8}')
    cfg = {k: v for k, v in _config(a).items() if k not in ("task", "space")}
    cfg["space"] = {"type": "tokens", "n_tokens": 2}
    cfg["objective"] = {"type": "feature_direction", "layer": 2, "file": str(tmp / "sae"), "row": 1}
    return cfg, [], {}


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def _empty_split(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    data = tmp / "data"
    shutil.copytree(blackbox_data_dir() / "rotten_tomatoes", data / "rotten_tomatoes")
    shutil.copytree(blackbox_data_dir() / "raw", data / "raw")
    (data / "rotten_tomatoes" / "train.jsonl").write_text("")
    return _config(a), [], {"BLACKBOX_DATA": str(data)}


def _other_space(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    from blackbox.strategies.base import Box
    from blackbox.study.storage import open_study

    url = f"sqlite:///{tmp / 'shared.db'}"
    box = Box(np.array([0.0]), np.array([1.0]), np.array([False]), ("other",))
    open_study(url, "bad", box, "f")
    return _config(a, storage=url), [], {}


def _broken_weights(
    prep: Callable[[Path, Path], tuple[Any, list[str], dict[str, str]]],
) -> Callable[[Path, Path], tuple[Any, list[str], dict[str, str]]]:
    """``prep`` with a copy of the tiny model whose weights file is garbage: the case's own
    message (not a load error) shows that it was refused before the model loads."""

    def broken(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
        cfg, args, env = prep(tmp, a)
        shutil.copytree(a / "model", tmp / "model")
        for w in (tmp / "model").glob("*.safetensors"):
            w.write_bytes(b"not weights")
        cfg["model"] = {"name": str(tmp / "model"), "device": "cpu"}
        return cfg, args, env

    return broken


def _racing_fluency(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    cfg = {k: v for k, v in _config(a).items() if k not in ("task", "space")}
    cfg["space"] = {"type": "tokens", "n_tokens": 2}
    cfg["objective"] = {"type": "fluency", "prompts": ["The sea is"]}
    cfg["scoring"] = {"racing": True}
    return cfg, [], {}


def _adam_perplexity(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    cfg = _config(a)
    cfg["task"] = {"name": "bb_rotten_tomatoes_ppl", "metric": "bits_per_byte", "search_size": 2}
    cfg["space"] = {"type": "soft_prompt", "n_tokens": 2}
    cfg["strategy"] = {"name": "adam"}
    return cfg, [], {}


CASES: list[Case] = [
    (
        "a metric a perplexity task does not have (before the model loads)",
        _broken_weights(_set("task.name=bb_rotten_tomatoes_ppl")),
        "config: task.metric: 'acc' is not a metric of task 'bb_rotten_tomatoes_ppl'; allowed: "
        "['word_perplexity', 'byte_perplexity', 'bits_per_byte']",
    ),
    (
        "max_gen_toks on a task that does not generate (before the model loads)",
        _broken_weights(_set("task.max_gen_toks=8")),
        "config: task.max_gen_toks: task 'bb_rotten_tomatoes' does not generate "
        "(multiple_choice); allowed: null, or a generative (generate_until) task",
    ),
    (
        "a gradient strategy on a task without choices (before the model loads)",
        _broken_weights(_adam_perplexity),
        "config: strategy.name: 'adam' follows the gold choice's gradient, and task "
        "'bb_rotten_tomatoes_ppl' has no choices (loglikelihood_rolling); allowed: a "
        "gradient-free strategy (pso, nevergrad, optuna, random, token_ga)",
    ),
    (
        "a metric the task does not have (before the model loads)",
        _broken_weights(_set("task.metric=f1")),
        "config: task.metric: 'f1' is not a metric of task 'bb_rotten_tomatoes'; allowed: "
        "['acc', 'acc_norm', 'gold_logprob']",
    ),
    (
        "racing an objective with no value per document (before the model loads)",
        _broken_weights(_racing_fluency),
        "config: scoring.racing: objective 'fluency' (metric 'neg_xentropy') has no value per "
        "document to race on; racing works for metrics that are means over documents (lm-eval "
        "accuracies and gold_logprob, classification, behaviour, reference, activation "
        "objectives)",
    ),
    (
        "unknown key",
        _set("budget.evals=3"),
        "config: unknown key 'budget.evals'; allowed here: evaluations, seconds, cost",
    ),
    (
        "wrong type",
        _set("budget.evaluations=many"),
        "config: budget.evaluations: Input should be a valid integer, unable to parse string "
        "as an integer (got 'many')",
    ),
    (
        "missing field",
        _missing_task,
        "config: objective: a study needs an objective (lm_eval_task with a task:, "
        "classification, behaviour, reference, neuron, residual_direction, feature_direction, "
        "lp_features, logit or fluency)",
    ),
    (
        "YAML python tag",
        _python_tag,
        "config: {tmp}/study.yaml line 21: not valid YAML (could not determine a constructor "
        "for the tag 'tag:yaml.org,2002:python/object/apply:os.system')",
    ),
    (
        "unknown model (hub id)",
        _set("model.name=no-such-org/no-such-model"),
        "model 'no-such-org/no-such-model': not a local directory and not in the Hugging Face "
        "cache; this machine is offline (HF_HUB_OFFLINE is set); download it where there is "
        "internet or pass a local directory",
    ),
    (
        "unknown model (path)",
        _set("model.name=/no/such/model"),
        "model '/no/such/model': no such local directory",
    ),
    (
        "unknown task",
        _set("task.name=no_such_task"),
        Parts(
            "unknown task 'no_such_task'; offline tasks: ",
            ("bb_rotten_tomatoes", "arc_easy", "mmlu_<subject>", "see `lm_eval ls tasks`)"),
        ),
    ),
    (
        "a strategy that cannot search the space",
        _set("strategy.name=adam"),
        "config: strategy.name: 'adam' cannot search a steering space (integer layers and "
        "coefficients, applied as hooks): it takes gradient steps on continuous coordinates; "
        "strategies for steering with lm_eval_task: nevergrad, optuna, pso, random; 'adam' "
        "works on: soft_prompt",
    ),
    (
        "an internal objective under steering without documents",
        lambda tmp, a: (
            {
                **{k: v for k, v in _config(a).items() if k != "task"},
                "objective": {"type": "neuron", "layer": 3, "index": 1},
            },
            [],
            {},
        ),
        "config: objective.prompts: steering has no prompt of its own, so 'neuron' must be "
        "measured over a prompt set; give objective.prompts (a list) or objective.prompts_file "
        "(one prompt per line)",
    ),
    (
        "a cost budget that pays for no candidate",
        _set("budget={cost: 1}"),
        "config: budget.cost: 1 forward-pass equivalents pay for no candidate; one costs at "
        "least 2 on the 2 search documents; allowed: budget.cost >= 2",
    ),
    (
        "an infinite cost budget (a run that never ends)",
        _set("budget={cost: .inf}"),
        "config: budget.cost: Input should be a finite number (got inf)",
    ),
    (
        "a cost budget below one candidate on a prompt set",
        lambda tmp, a: (
            {
                **{k: v for k, v in _config(a).items() if k != "task"},
                "objective": {"type": "neuron", "layer": 3, "index": 1, "prompts": ["a", "b", "c"]},
                "budget": {"cost": 2.5},
            },
            [],
            {},
        ),
        "config: budget.cost: 2.5 forward-pass equivalents pay for no candidate; one costs 3 on "
        "the 3 search documents; allowed: budget.cost >= 3",
    ),
    (
        "unknown strategy",
        _set("strategy.name=annealing"),
        "config: strategy.name: unknown name 'annealing'; allowed: ['adam', 'epo', 'gcg', 'nevergrad', 'optuna', 'pso', 'random', 'token_ga']",
    ),
    (
        "unknown nevergrad optimizer",
        _set("strategy.name=nevergrad", "strategy.settings={optimizer: NoSuchOpt}"),
        "config: strategy.settings.optimizer: unknown 'NoSuchOpt'; did you mean one of ['NGOpt', 'NGOptF', "
        "'NGOpt8', 'NGOpt4', 'NGOptRW']? (542 names in nevergrad.optimizers.registry)",
    ),
    (
        "unknown optuna sampler",
        _set("strategy.name=optuna", "strategy.settings={sampler: nope}"),
        "config: strategy.settings.sampler: 'nope' is not one of ('tpe', 'cmaes', 'gp', 'random', 'qmc', 'nsga2')",
    ),
    (
        "layer out of range",
        _set("space.layers=[0, 9]"),
        "config: space.layers: [0, 9] is outside the model's layers; allowed 0..3",
    ),
    (
        "corrupt vector file",
        _vector_file(lambda p: p.write_bytes(b"\x00not a tensor file")),
        "config: space.vectors.v.file: vector file '{tmp}/vec.pt': cannot be read as a tensor "
        "file (UnpicklingError)",
    ),
    (
        "pickled code in vector file",
        _vector_file(lambda p: torch.save({"vectors": _Boom()}, p)),
        "config: space.vectors.v.file: vector file '{tmp}/vec.pt': cannot be read as a tensor "
        "file (UnpicklingError)",
    ),
    (
        "wrong-shape vector file",
        _vector_file(lambda p: torch.save(torch.ones(3, 64), p)),
        "config: space.vectors.v.file: vector file '{tmp}/vec.pt': shape (3, 64); expected "
        "(4, 64) or (64,) for this model",
    ),
    (
        "control vector of another width",
        _vector_file(_control_vector, "vec.gguf"),
        "config: space.vectors.v.file: vector file '{tmp}/vec.gguf': layer 1 has width 32; the "
        "model's is 64",
    ),
    (
        "steered file beyond the model's layers",
        _vector_file(lambda p: torch.save({"layers.9": {"steering_vector": torch.ones(64)}}, p)),
        "config: space.vectors.v.file: vector file '{tmp}/vec.pt': hookpoint 'layers.9' is not a "
        "decoder layer of this model (blackbox steers decoder-layer outputs)",
    ),
    (
        "layer-dict vector file for other layers",
        _vector_file(lambda p: torch.save({3: torch.ones(64)}, p)),
        "config: space.vectors.v.file: has directions for layers [3] only, not [0, 1, 2]; set "
        "space.layers (or space.fixed_layers.v) within them",
    ),
    (
        "SAE directory without weights",
        _sae_without_weights,
        "config: objective.file: SAE directory '{tmp}/sae': no sae_weights.safetensors (a "
        "sae-lens SAE directory)",
    ),
    (
        "empty split (empty data file)",
        _empty_split,
        "config: task.name: 'bb_rotten_tomatoes': its data cannot be loaded (StopIteration); "
        "is a data file empty or malformed?",
    ),
    (
        "no documents left for held-out",
        _set("task.search_split=test", "task.heldout_split=test", "task.search_size=100000"),
        "config: task.heldout_split: no documents left in 'test'",
    ),
    (
        "unreachable storage",
        _set("storage=postgresql://bb:hunter2@127.0.0.1:9/db"),
        "storage 'postgresql://bb:***@127.0.0.1:9/db': cannot be reached ((psycopg.OperationalError) "
        'connection failed: connection to server at "127.0.0.1", port 9 failed: Connection refused)',
    ),
    (
        "name '..' (would write into the parent directory)",
        _set("name=.."),
        "config: name: '..' (2 characters) is not a safe name; allowed: 1-100 of letters, "
        "digits, '_', '.', '-', not starting with '.' or '-'",
    ),
    (
        "300-character name",
        _set("name=" + "a" * 300),
        "config: name: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' (300 characters) is not a safe "
        "name; allowed: 1-100 of letters, digits, '_', '.', '-', not starting with '.' or '-'",
    ),
    (
        "pso setting of the wrong type",
        _set("strategy.name=pso", "strategy.settings={c1: fast}"),
        "config: strategy.settings.c1: 'fast' is not valid for 'pso' (input should be a valid "
        "number, unable to parse string as a number; declared type: float)",
    ),
    (
        "nevergrad setting of the wrong type",
        _set("strategy.name=nevergrad", "strategy.settings={budget: many}"),
        "config: strategy.settings.budget: 'many' is not valid for 'nevergrad' (input should be "
        "a valid integer, unable to parse string as an integer; declared type: int | None)",
    ),
    (
        "seed above 2**32 - 1",
        _set("seed=99999999999999999999999"),
        "config: seed: Input should be less than or equal to 4294967295 "
        "(got 99999999999999999999999)",
    ),
    (
        "negative seed",
        _set("seed=-1"),
        "config: seed: Input should be greater than or equal to 0 (got -1)",
    ),
    (
        "--out an existing file",
        lambda tmp, a: (
            (tmp / "afile").write_text("x"),
            _config(a),
            ["--out", str(tmp / "afile")],
            {},
        )[1:],
        "--out: '{tmp}/afile' exists and is not a directory",
    ),
    (
        "--out below a file",
        lambda tmp, a: (
            (tmp / "afile").write_text("x"),
            _config(a),
            ["--out", str(tmp / "afile/run")],
            {},
        )[1:],
        "--out: '{tmp}/afile' is a file, so '{tmp}/afile/run' cannot be created",
    ),
    (
        "an unencoded '@' in the storage password",
        _set("storage=postgresql://bb:hun@ter2@127.0.0.1:9/db"),
        "config: storage: the user or password holds an unencoded '@'; percent-encode it as %40 "
        "(got 'postgresql://bb:***@127.0.0.1:9/db')",
    ),
    (
        "storage password in the query string",
        _set("storage=postgresql://bb@127.0.0.1:9/db?password=hunter2"),
        "storage 'postgresql://bb@127.0.0.1:9/db?password=***': cannot be reached "
        '((psycopg.OperationalError) connection failed: connection to server at "127.0.0.1", '
        "port 9 failed: Connection refused)",
    ),
    (
        "unknown storage scheme",
        _set("storage=redis://127.0.0.1/0"),
        "config: storage: 'redis' is not a storage URL scheme; allowed: sqlite:///FILE, "
        "postgresql://USER:PASSWORD@HOST/DB, mysql://..., journal:///FILE (got 'redis://127.0.0.1/0')",
    ),
    (
        "an unembed word of several tokens",
        _set("space.vectors=[{name: v, unembed: [' implausible', ' no']}]"),
        "config: space.vectors.v.unembed: ' implausible' is 3 tokens [' impl', 'aus', 'ible']; "
        "give a word that is one token (often with a leading space)",
    ),
    (
        "a task YAML that is not a task",
        lambda tmp, a: (
            (tmp / "notatask.yaml").write_text("foo: bar\n"),
            _config(a, task={"name": str(tmp / "notatask.yaml"), "search_size": 2}),
            [],
            {},
        )[1:],
        "task '{tmp}/notatask.yaml': not a task lm-eval can build (ValueError: Unknown config "
        "shape: keys=['foo']); an lm-eval task YAML needs at least task:, dataset_path: and "
        "output_type:",
    ),
    (
        "an empty concept prompt",
        _set("space.vectors=[{name: v, concept: [' '], contrast: [b]}]"),
        "config: space.vectors.0.concept: prompt 0 is empty; every prompt needs some text (a "
        "vector is the mean activation difference of the prompts' last tokens)",
    ),
    (
        "a YAML anchor 'bomb' (10^9 items) as a setting",
        _anchor_bomb,
        "config: strategy.settings.c1: [['x', 'x', 'x', 'x', ...], [[...], [...], [...], [...], "
        "...], [[...], [...], [...], [...], ...], [[...], [...], [...], [...], ...], ...] is not "
        "valid for 'pso' (input should be a valid number; declared type: float)",
    ),
    (
        "study exists with another space",
        _other_space,
        "study 'bad' in 'sqlite:///{tmp}/shared.db' was made for another search space "
        "(other:float[0,1]...); use another study name or --out",
    ),
]


def _duplicate_key(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    """A key given twice in a nested mapping (YAML would keep the last one silently)."""
    rest = {k: v for k, v in _config(a).items() if k not in ("name", "budget")}
    text = "name: bad\nbudget:\n  evaluations: 2\n  evaluations: 40\n" + yaml.safe_dump(rest)
    return text, [], {}


def _bad_name_text(tmp: Path, a: Path) -> tuple[Any, list[str], dict[str, str]]:
    return yaml.safe_dump(_config(a, name="abc\n")), [], {}


NO_MYSQL_DRIVER = all(importlib.util.find_spec(m) is None for m in ("MySQLdb", "pymysql"))
# Rows of #27: each caught before the model loads (the broken-weights copy shows it)
CASES += [
    (
        "storage without a scheme: user:password@host (password masked)",
        _set("storage=bb:hunter2@127.0.0.1:9/db"),
        "config: storage: a storage URL starts with a scheme (SCHEME://); allowed: "
        "sqlite:///FILE, postgresql://USER:PASSWORD@HOST/DB, mysql://..., journal:///FILE "
        "(got 'bb:***@127.0.0.1:9/db')",
    ),
    (
        "storage as libpq keywords: password=... (masked)",
        _set("storage='password=hunter2 host=127.0.0.1'"),
        "config: storage: a storage URL starts with a scheme (SCHEME://); allowed: "
        "sqlite:///FILE, postgresql://USER:PASSWORD@HOST/DB, mysql://..., journal:///FILE "
        "(got 'password=*** host=127.0.0.1')",
    ),
    (
        "a name with a final newline",
        _bad_name_text,
        "config: name: 'abc\\n' (4 characters) is not a safe name; allowed: 1-100 of letters, "
        "digits, '_', '.', '-', not starting with '.' or '-'",
    ),
    (
        "coefficient bounds of 1e308 (before the model loads)",
        _broken_weights(_set("space.coeff=[-1.0e+308, 1.0e+308]")),
        "config: space.coeff: [-1e+308, 1e+308] is out of range; allowed: bounds within "
        "[-1000, 1000] (relative to the layer's residual norm)",
    ),
    (
        "pso c1: 1e400 (YAML text, not a number)",
        _broken_weights(_set("strategy.name=pso", "strategy.settings={c1: 1e400}")),
        "config: strategy.settings.c1: '1e400' is text, not a number (YAML reads a float only "
        "with a '.': write 1.0e+5, not 1e5); allowed: a finite number (strategy 'pso')",
    ),
    (
        "pso w: .nan",
        _broken_weights(_set("strategy.name=pso", "strategy.settings={w: .nan}")),
        "config: strategy.settings.w: nan is not a finite number; allowed: a finite number "
        "(strategy 'pso')",
    ),
    (
        "a YAML key given twice (nested)",
        _duplicate_key,
        "config: {tmp}/study.yaml line 4: duplicate key 'evaluations' (first on line 3); give "
        "each key once",
    ),
    (
        "seed: true (a boolean is not an integer)",
        _set("seed=true"),
        "config: seed: a boolean (true/false) is not a number; allowed: an integer (got True)",
    ),
    (
        "fixed_layers naming a vector that does not exist",
        _broken_weights(_set("space.fixed_layers={nope: 1}")),
        "config: space.fixed_layers: 'nope' is not a vector of this space; allowed: ['v']",
    ),
    (
        "fixed_layers at layer 999 (before the model loads)",
        _broken_weights(_set("space.fixed_layers={v: 999}")),
        "config: space.fixed_layers.v: 999 is outside 0..3",
    ),
    (
        "layers beyond the model's (before the model loads)",
        _broken_weights(_set("space.layers=[0, 9]")),
        "config: space.layers: [0, 9] is outside the model's layers; allowed 0..3",
    ),
    (
        "--set a list item past the end (a.99.b)",
        _set("space.vectors.99.name=x"),
        "--set space.vectors.99.name: space.vectors: index 99 is out of range (1 item; "
        "allowed: 0..0)",
    ),
    (
        "--set a list item past the end (a[1].b)",
        lambda tmp, a: (
            _config(a, side_effects=[{"type": "kl"}]),
            ["--set=side_effects[1].size=16"],
            {},
        ),
        "--set side_effects[1].size: side_effects: index 1 is out of range (1 item; allowed: 0..0)",
    ),
    (
        "--set a list item in range (a[0].b): its own check runs",
        lambda tmp, a: (
            _config(a, side_effects=[{"type": "kl"}]),
            ["--set=side_effects[0].size=0"],
            {},
        ),
        "config: side_effects.0.size: Input should be greater than or equal to 1 (got 0)",
    ),
    *(
        [
            (
                "mysql:// storage without a MySQL driver",
                _broken_weights(_set("storage=mysql://bb:hunter2@127.0.0.1:9/db")),
                "storage 'mysql://bb:***@127.0.0.1:9/db': its mysql driver is not installed (No "
                "module named 'MySQLdb'); install it: pip install mysqlclient (or pymysql, with "
                "mysql+pymysql://)",
            )
        ]
        if NO_MYSQL_DRIVER
        else []
    ),
]


def _files(root: Path) -> dict[str, float]:
    """Files under ``root`` with their mtimes (the data cache of the empty-split case aside:
    lm-eval task YAMLs are materialised there, as in any data cache)."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime
        for p in root.rglob("*")
        if p.relative_to(root).parts[0] != "data"
    }


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(
    case: Case, assets: Path, tmp_path: Path
) -> None:
    _, prep, expected = case
    cfg, args, env = prep(tmp_path, assets)
    config = tmp_path / "study.yaml"
    config.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    before = _files(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "blackbox.cli", "run", str(config), "--out", str(out)]
        + ["--no-progress", *args],
        cwd=tmp_path,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = proc.stderr.strip().splitlines()[-1]
    if isinstance(expected, Parts):
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert last.startswith("blackbox: error: " + expected.start), proc.stderr[-3000:]
        assert all(part in last for part in expected.contains), last
    else:
        want = "blackbox: error: " + expected.format(tmp=tmp_path, assets=assets)
        assert (proc.returncode, last) == (2, want), proc.stderr[-3000:]
    assert not out.exists()
    after = _files(tmp_path)
    assert after == before, "nothing written"
    assert "hunter2" not in proc.stderr + proc.stdout and "ter2" not in proc.stderr
    assert "pwned" not in proc.stdout + proc.stderr and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--storage=sqlite:///x.db", "--set=strategy.name=pso", "--workers=3"]
            + ["--devices=cpu,cpu"],
            "worker: --devices names 2 devices for --workers 3; give one per worker (or one "
            "for all)",
        ),
        (
            ["--set=strategy.name=optuna"],
            "worker: no storage; pass --storage URL (or set $BLACKBOX_STORAGE or storage: in "
            "the config)",
        ),
        (
            ["--storage=sqlite:///x.db", "--set=strategy.name=optuna", "--max-retry=-1"],
            "worker: --max-retry must be >= 0, got -1",
        ),
        (  # told before the storage is made: no x.db
            ["--storage=sqlite:///x.db", "--set=strategy.name=optuna"]
            + ["--set=model.name=/nonexistent/model"],
            "model '/nonexistent/model': no such local directory",
        ),
        (  # spawning workers makes the storage first: the model is checked before that too
            ["--storage=sqlite:///x.db", "--set=strategy.name=pso", "--workers=2"]
            + ["--set=model.name=/nonexistent/model"],
            "model '/nonexistent/model': no such local directory",
        ),
    ],
    ids=["devices per worker", "no storage", "negative retries", "no model", "no model, 2"],
)
def test_worker_bad_input(args: list[str], expected: str, assets: Path, tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(_config(assets)))
    env = {k: v for k, v in os.environ.items() if k != "BLACKBOX_STORAGE"}
    proc = subprocess.run(
        [sys.executable, "-m", "blackbox.cli", "worker", str(config), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stderr.strip().splitlines()[-1]) == (
        2,
        f"blackbox: error: {expected}",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
