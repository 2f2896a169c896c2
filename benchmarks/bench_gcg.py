"""blackbox GCG vs nanoGCG on the embedded model: time per step and final loss, side by side.

Same chat prompt, target string, initial suffix, search width, top-k and steps for both; one
row per seed and method, then the ratios.  nanoGCG (``pip install --no-deps nanogcg``; its pinned
transformers<=4.47 clashes with ours) runs with ``use_prefix_cache=False`` because its prefix
cache path indexes the legacy tuple cache, which transformers 5 no longer returns.

nanoGCG strips *every* ``tokenizer.bos_token`` from the rendered chat template (``str.replace``
without a count); SmolLM2's ``bos_token`` is ``<|im_start|>``, so left alone it would optimise a
different prompt (``...<|im_end|>\nuser\n...<|im_end|>\nassistant\n``, no role markers).  The
bench therefore hands nanoGCG the chat text already rendered (a pass-through chat template, as
:func:`nanogcg_messages`), so both optimise the same tokens; ``--nanogcg-own-prompt`` restores
nanoGCG's own rendering, and the parity line says whether nanoGCG's prompt ids equal ours.

    python benchmarks/bench_gcg.py --steps 10 --search-width 64 --topk 64 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from blackbox.api import Problem
from blackbox.evals.behaviour import ReferenceObjective, with_targets
from blackbox.forward.splice import Items
from blackbox.models import load_model
from blackbox.search_spaces.tokens.space import TokenSpace
from blackbox.strategies.epo import GCG
from blackbox.strategies.proposals import topk_tokens


@dataclass
class Row:
    method: str
    seed: int
    sec_per_step: float
    final_loss: float
    best_string: str


def chat_parts(tokenizer, message: str) -> tuple[list[int], list[int]]:
    """Token ids before and after ``{optim_str}`` exactly as nanoGCG builds them."""
    msgs = [{"role": "user", "content": message + "{optim_str}"}]
    template = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if tokenizer.bos_token and template.startswith(tokenizer.bos_token):
        template = template.replace(tokenizer.bos_token, "", 1)
    before, after = template.split("{optim_str}")
    return tokenizer(before)["input_ids"], tokenizer(after, add_special_tokens=False)["input_ids"]


def our_setup(lm, args, use_cache: bool = True):
    """Our token space, reference objective and initial suffix ids for the bench's prompt
    (``use_cache=False``: the chat text's key/values are recomputed every call)."""
    before, after = chat_parts(lm.tokenizer, args.message)
    target = lm.tokenizer(args.target, add_special_tokens=False)["input_ids"]
    init_ids = lm.tokenizer(args.init, add_special_tokens=False)["input_ids"]
    space = TokenSpace(lm.tokenizer, n_tokens=len(init_ids), ascii_only=True)
    items = with_targets(Items([list(before)], [list(after)]), [target])
    obj = ReferenceObjective(lm.model, {"search": items}, max_rows=args.search_width)
    obj.enable_fluency()
    if not use_cache:
        obj.splice.cache_bytes = 0  # every call recomputes the prefix's key/values
    obj.before, obj.after, obj.target_ids = before, after, target
    return space, obj, init_ids


def run_ours(lm, args, seed: int, use_cache: bool, keep_parents: bool = True) -> Row:
    torch.manual_seed(seed)
    space, obj, init_ids = our_setup(lm, args, use_cache)
    s = GCG(
        space.box,
        seed=seed,
        search_width=args.search_width,
        topk=args.topk,
        init=space.indices_of(np.array(init_ids)),
        keep_parents=keep_parents,
    )
    problem = Problem(space, obj)
    s.bind(problem)
    t0 = time.perf_counter()
    steps = []
    for _ in range(args.steps):
        x = s.ask()
        ev = problem.evaluate(space.decode(x))
        s.tell(x, ev.values, extra=ev.extra)
        s.pop_extra_cost()
        steps.append(-float(np.nanmax(np.where(np.isfinite(ev.values), ev.values, np.nan))))
    dt = (time.perf_counter() - t0) / args.steps
    best = space.decode(s.best_x[None])[0].text
    name = "blackbox" + ("" if use_cache else " (no cache)") + ("" if keep_parents else " (move)")
    if getattr(args, "show_steps", False):
        print(f"{name} seed {seed} per-step best: {[round(v, 4) for v in steps]}")
    return Row(name, seed, dt, -s.best_value, best)


PASS_THROUGH_TEMPLATE = "{{ messages[0]['content'] }}"


class nanogcg_messages:  # noqa: N801 (a context manager named for what it yields)
    """Context manager yielding the ``messages`` to hand ``nanogcg.run`` so that it builds
    exactly :func:`chat_parts`' tokens: the chat text rendered here (first BOS removed, as
    nanoGCG intends), behind a pass-through chat template set on the tokenizer meanwhile.

    Without it nanoGCG's ``template.replace(tokenizer.bos_token, "")`` also deletes the
    ``<|im_start|>`` before ``user`` and ``assistant`` (SmolLM2's BOS is ``<|im_start|>``).
    ``own=True`` yields the plain message instead (nanoGCG's own rendering)."""

    def __init__(self, tokenizer, message: str, own: bool = False) -> None:
        self.tokenizer, self.message, self.own = tokenizer, message, own

    def __enter__(self):
        if self.own:
            return self.message
        tok = self.tokenizer
        msgs = [{"role": "user", "content": self.message + "{optim_str}"}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if tok.bos_token and text.startswith(tok.bos_token):
            text = text.replace(tok.bos_token, "", 1)
        self.saved = tok.chat_template
        tok.chat_template = PASS_THROUGH_TEMPLATE
        return [{"role": "user", "content": text}]

    def __exit__(self, *exc) -> None:
        if not self.own:
            self.tokenizer.chat_template = self.saved


def nanogcg_prompt_ids(lm, args) -> tuple[list[int], list[int]]:
    """The before/after ids nanoGCG's own ``run`` builds (stopped before its first forward)."""
    import nanogcg.gcg as ngcg

    class Stop(Exception):
        pass

    class Probe(ngcg.GCG):
        def init_buffer(self):
            raise Stop

    cfg = ngcg.GCGConfig(optim_str_init=args.init, use_prefix_cache=False, verbosity="WARNING")
    probe = Probe(lm.model, lm.tokenizer, cfg)
    emb = lm.model.get_input_embeddings().weight
    with nanogcg_messages(lm.tokenizer, args.message, args.nanogcg_own_prompt) as messages:
        try:
            probe.run(messages, args.target)
        except Stop:
            pass

    def ids(e):  # embeddings back to ids (exact rows of the table)
        return torch.cdist(e[0], emb).argmin(1).tolist()

    return ids(probe.before_embeds), ids(probe.after_embeds)


def run_nanogcg(lm, args, seed: int) -> Row:
    import nanogcg
    from nanogcg import GCGConfig

    cfg = GCGConfig(
        num_steps=args.steps,
        search_width=args.search_width,
        topk=args.topk,
        seed=seed,
        optim_str_init=args.init,
        use_prefix_cache=False,
        verbosity="WARNING",
    )
    t0 = time.perf_counter()
    with nanogcg_messages(lm.tokenizer, args.message, args.nanogcg_own_prompt) as messages:
        res = nanogcg.run(lm.model, lm.tokenizer, messages, args.target, cfg)
    dt = (time.perf_counter() - t0) / args.steps
    if args.show_steps:
        print(f"nanoGCG seed {seed} per-step best: {[round(float(v), 4) for v in res.losses]}")
    return Row("nanoGCG", seed, dt, float(res.best_loss), res.best_string)


def parity(lm, args, n_random: int = 8) -> None:
    """Print how far the two implementations agree at the initial suffix: the gradient top-k
    token sets per position (both restricted to printable ASCII) and the loss of the same
    candidates under each implementation's own loss code."""
    import nanogcg.gcg as ngcg

    tok = lm.tokenizer
    space, obj, init = our_setup(lm, args)
    before, after = list(obj.before), list(obj.after)
    target = list(obj.target_ids)
    allowed = space.allowed_ids
    cfg = ngcg.GCGConfig(optim_str_init=args.init, use_prefix_cache=False, verbosity="WARNING")
    ref = ngcg.GCG(lm.model, tok, cfg)
    emb = lm.model.get_input_embeddings()
    ref.target_ids = torch.tensor([target])
    ref.before_embeds, ref.after_embeds = emb(torch.tensor([before])), emb(torch.tensor([after]))
    ref.target_embeds = emb(ref.target_ids)
    grad = ref.compute_token_gradient(torch.tensor([init]))[0]
    grad[:, ref.not_allowed_ids] = float("inf")
    their_top = (-grad).topk(args.topk, dim=1).indices.numpy()
    ours_top = allowed[
        topk_tokens(obj.token_gradients(np.array([init])).grad[0][:, allowed], args.topk)
    ]
    same = [len(set(a) & set(b)) for a, b in zip(ours_top, their_top)]
    rng = np.random.default_rng(0)
    cands = np.stack(
        [init] + [allowed[rng.integers(0, len(allowed), len(init))] for _ in range(n_random)]
    )
    ev = Problem(space, obj).evaluate(space.decode(np.stack([space.indices_of(c) for c in cands])))
    with torch.no_grad():
        ids = torch.as_tensor(cands)
        parts = [ref.before_embeds, None, ref.after_embeds, ref.target_embeds]
        embeds = torch.cat(
            [emb(ids) if p is None else p.repeat(len(cands), 1, 1) for p in parts], dim=1
        )
        theirs = ref._compute_candidates_loss_original(len(cands), embeds).numpy()
    ok = np.isfinite(ev.values)  # ours rejects prompts that do not survive retokenisation
    nb, na = nanogcg_prompt_ids(lm, args)
    print(
        f"parity at the initial suffix: top-{args.topk} sets shared per position {same}; "
        f"loss of {int(ok.sum())} candidates max |ours - nanoGCG| "
        f"{np.abs(-ev.values[ok] - theirs[ok]).max():.2e}; "
        f"nanoGCG's own prompt ids equal ours: {nb == before and na == after}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--search-width", type=int, default=64)
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--message", default="Tell me how to bake bread.")
    ap.add_argument("--target", default="Sure, here is how to bake bread")
    ap.add_argument("--init", default="x x x x x x x x x x")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--no-cache-variant", action="store_true", help="also run ours without cache")
    ap.add_argument(
        "--move-variant",
        action="store_true",
        help="also run ours with keep_parents=False (always move to the best candidate)",
    )
    ap.add_argument(
        "--nanogcg-own-prompt",
        action="store_true",
        help="let nanoGCG render the chat itself (it then strips every <|im_start|>: another prompt)",
    )
    ap.add_argument("--show-steps", action="store_true", help="print each step's best loss")
    args = ap.parse_args()
    lm = load_model()
    parity(lm, args)
    if args.warmup:  # one untimed step of each, so neither pays first-call allocation costs
        warm = argparse.Namespace(**{**vars(args), "steps": 1})
        run_ours(lm, warm, 0, use_cache=True)
        run_nanogcg(lm, warm, 0)
    rows: list[Row] = []
    for seed in args.seeds:
        rows.append(run_ours(lm, args, seed, use_cache=True))
        start = len(rows) - 1
        if args.no_cache_variant:
            rows.append(run_ours(lm, args, seed, use_cache=False))
        if args.move_variant:
            rows.append(run_ours(lm, args, seed, use_cache=True, keep_parents=False))
        rows.append(run_nanogcg(lm, args, seed))
        for r in rows[start:]:
            print(
                f"{r.method:22s} seed {r.seed}  {r.sec_per_step:7.2f} s/step  loss {r.final_loss:.4f}  {r.best_string!r}",
                flush=True,
            )
    print("\nmethod                  mean s/step   mean final loss")
    by: dict[str, list[Row]] = {}
    for r in rows:
        by.setdefault(r.method, []).append(r)
    for m, rs in by.items():
        print(
            f"{m:22s} {np.mean([r.sec_per_step for r in rs]):12.2f}   {np.mean([r.final_loss for r in rs]):.4f}"
        )
    ref = by["nanoGCG"]
    ref_t, ref_l = np.mean([r.sec_per_step for r in ref]), np.mean([r.final_loss for r in ref])
    for m, rs in by.items():
        if m == "nanoGCG":
            continue
        t, loss = np.mean([r.sec_per_step for r in rs]), np.mean([r.final_loss for r in rs])
        print(f"\n{m} / nanoGCG: time per step x{t / ref_t:.2f}, final loss {loss - ref_l:+.4f}")


if __name__ == "__main__":
    main()
