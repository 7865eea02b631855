#!/usr/bin/env python
"""Train DuoRec with plain or adaptive InfoNCE (AdaptiveRec) and evaluate it the papers' way.

Examples (from the repository root):

    python examples/duorec/train.py                         # synthetic data, AdaptiveRec, ~1.5 min on 2 cores
    python examples/duorec/train.py --dataset beauty --data-path ../shared/data/beauty/Beauty.txt --loss duorec
    python examples/duorec/train.py --dataset beauty --stats-only   # {"users": ..., "items": ..., "interactions": ...}

Every run writes ``<out>/results.json`` (config, dataset statistics, per-epoch history with the
diagnostics, best-checkpoint ``valid`` and ``test`` metrics), the PNG plots, and checkpoints
``last.pt`` (every epoch; ``--resume`` continues from it) and ``best.pt``. A folder that already holds
a run needs ``--resume`` or ``--overwrite``.

Several processes (one global batch of ``--batch-size`` rows split across them, see parallel.py):

    python -m torch.distributed.run --standalone --nproc_per_node=2 examples/duorec/train.py --device cpu
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules: data, model, views, ...
# OpenMP threads that spin while waiting make PyTorch several times slower on a CPU shared with other
# processes; passive waiting costs little when the CPU is idle. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from tqdm import tqdm  # noqa: E402

from adaptive_contrastive import AdaptiveInfoNCE, ThresholdNet  # noqa: E402

# isort: split
# The example's own modules (examples/duorec/).
import augment  # noqa: E402
import checkpoint  # noqa: E402
import data as datasets  # noqa: E402
import diagnostics  # noqa: E402
import parallel  # noqa: E402
import plots  # noqa: E402
import recipes  # noqa: E402
import run_folder  # noqa: E402
from evaluate import EvalSet, make_eval_set, metrics_table  # noqa: E402
from model import DuoRec  # noqa: E402
from views import CONTRASTS, SameTargetSampler  # noqa: E402

LOSSES = ("none", "duorec", "adaptive")
FALSE_NEGATIVES = ("attract", "drop", "relabel")
KNOWN_POSITIVES = ("none", "same-target", "intent")
DEFAULT_EPOCHS = {"synthetic": 20, "ml-1m": 300, "beauty": 300}
# Arguments that may change between a run and its --resume.
RESUMABLE = {
    "resume", "overwrite", "epochs", "patience", "device", "out", "threads", "quiet", "stats_only", "download",
    "data_path", "time_budget", "no_plots", "no_checkpoints",
}  # fmt: skip
# What a last.pt must hold to be continued from.
CHECKPOINT_KEYS = ("config", "epoch", "model", "loss_fn", "optimizer", "history", "best", "stopped", "rng")


# ------------------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of the issue, plus a few extras (``--lr``, ``--max-len``, ``--max-steps``, ...)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument("--dataset", choices=datasets.DATASETS, default="synthetic")
    p.add_argument(
        "--recipe",
        choices=recipes.RECIPES,
        default="default",
        help="a whole configuration: authors = the AdaptiveRec authors' released code, duorec = DuoRec's code; "
        "flags given on the command line override it",
    )
    p.add_argument(
        "--data-path",
        default=None,
        help="data file or folder (default: the download cache, then ../shared/data/<dataset>)",
    )
    p.add_argument("--download", action="store_true", help="fetch the official file (checked by its sha256)")
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default="adaptive",
        help="none = SASRec, duorec = plain InfoNCE, adaptive = AdaptiveRec",
    )
    p.add_argument("--contrast", choices=CONTRASTS, default="us_x", help="DuoRec's views, or CL4SRec's (cl4srec)")
    p.add_argument(
        "--false-negatives",
        choices=FALSE_NEGATIVES,
        default=None,
        help="AdaptiveInfoNCE mode (default: attract; drop for --loss duorec with --known-positives)",
    )
    p.add_argument(
        "--known-positives",
        choices=KNOWN_POSITIVES,
        default="none",
        help="in-batch pairs known to be false negatives: same-target = sequences with the same target item; "
        "intent = the true latent intent (synthetic data only: the oracle)",
    )
    p.add_argument("--mask", choices=("hard", "soft"), default="hard")
    p.add_argument(
        "--mask-gradient",
        choices=("labels", "full"),
        default="labels",
        help="how the soft mask is differentiated: labels (the threshold learns from L_reg alone) or full "
        "(the exact derivative, which collapses the threshold; reproduces e6-soft-0)",
    )
    p.add_argument(
        "--threshold-arch",
        choices=("set", "flat", "authors"),
        default="set",
        help="ThresholdNet architecture (flat, authors: drop_last batches)",
    )
    p.add_argument(
        "--threshold-input",
        choices=("view", "next-item"),
        default="view",
        help="what the ThresholdNet reads: the first contrastive view, or the next-item representation (authors)",
    )
    p.add_argument(
        "--similarity", choices=("dot", "cos"), default=None, help="default: dot for duorec, cos for adaptive"
    )
    p.add_argument("--temperature", type=float, default=1.0, help="tau")
    p.add_argument("--lmd", type=float, default=0.1, help="weight of the contrastive loss (lambda)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=None, help=f"maximum epochs (default {DEFAULT_EPOCHS})")
    p.add_argument(
        "--patience", type=int, default=10, help="epochs without a better validation NDCG@10 before stopping"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    p.add_argument("--out", default=None, help="output folder (default runs/<dataset>-<loss>-<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (its files are removed first)")
    p.add_argument("--stats-only", action="store_true", help="print the filtered dataset's statistics as JSON and exit")
    # extras
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="cosine: timm's CosineLRScheduler as the authors set it (5 warm-up epochs from lr/10, cosine to lr/10 "
        "over --epochs)",
    )
    p.add_argument("--drop-last", action="store_true", help="drop the incomplete last batch of every epoch")
    p.add_argument(
        "--early-stop-metric",
        default="NDCG@10",
        choices=[f"{m}@{k}" for m in ("NDCG", "MRR", "Recall") for k in (5, 10, 20)],
        help="validation metric that picks the best epoch and drives --patience",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds of wall time (from the start, data loading included) after which training stops and the best "
        "checkpoint is evaluated",
    )
    p.add_argument("--max-len", type=int, default=datasets.MAX_LEN)
    p.add_argument("--dropout", type=float, default=0.5, help="encoder dropout, hidden states and attention")
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=1,
        help="AdaptiveInfoNCE epochs run as plain InfoNCE while k_stat is collected",
    )
    p.add_argument(
        "--no-bucketing", action="store_true", help="pad each batch to its longest input instead of by length groups"
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop each epoch after this many steps (smoke tests, timing)"
    )
    p.add_argument("--synthetic-users", type=int, default=1000)
    synthetic = p.add_argument_group("synthetic data (the regime study's knobs; defaults = the default data)")
    synthetic.add_argument(
        "--synthetic-intents", type=int, default=16, help="latent intents (more: rarer false negatives)"
    )
    synthetic.add_argument("--synthetic-items-per-intent", type=int, default=40)
    synthetic.add_argument("--synthetic-min-len", type=int, default=5, help="shortest generated sequence")
    synthetic.add_argument("--synthetic-max-len", type=int, default=15, help="longest generated sequence")
    synthetic.add_argument("--synthetic-noise", type=float, default=0.05, help="chance of a random catalogue item")
    synthetic.add_argument("--synthetic-core", type=int, default=datasets.CORE, help="k of the k-core filter")
    synthetic.add_argument("--synthetic-shared-items", type=int, default=0, help="items common to every intent")
    synthetic.add_argument("--synthetic-shared-rate", type=float, default=0.0, help="chance of a shared item per step")
    synthetic.add_argument(
        "--synthetic-markov", type=float, default=1.0, help="chance that a step follows the chain (else: popularity)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    augment.add_arguments(p)
    p.add_argument("--no-plots", action="store_true", help="write no PNG figures (many short runs)")
    p.add_argument(
        "--no-checkpoints",
        action="store_true",
        help="no last.pt (so no --resume) and a model-only best.pt: for a large loss state (the authors' g: 2 GB)",
    )
    args = p.parse_args(argv)
    recipes.apply(args, recipes.explicit_arguments(p, argv))
    augment.check_arguments(p, args)
    if args.similarity is None:
        args.similarity = "dot" if args.loss == "duorec" else "cos"
    if args.false_negatives is None:
        # DuoRec with known positives masks them out of its denominator; AdaptiveRec attracts its suspects.
        args.false_negatives = "drop" if args.loss == "duorec" and args.known_positives != "none" else "attract"
    if args.known_positives == "intent" and args.dataset != "synthetic":
        p.error("--known-positives intent needs the true intents of --dataset synthetic; use same-target")
    if args.known_positives != "none" and args.loss == "none":
        p.error("--known-positives needs a contrastive loss (--loss duorec or adaptive)")
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS[args.dataset]
    if args.out is None:
        args.out = os.path.join("runs", f"{args.dataset}-{args.loss}-{args.seed}")
    if args.batch_size < 2:
        p.error("--batch-size must be at least 2 (in-batch negatives)")
    if args.resume and args.overwrite:
        p.error("--resume continues a run and --overwrite replaces it: pass one of them")
    if not 0.0 <= args.dropout < 1.0:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"error: --device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name}: CUDA is not available here; use --device cpu")
    return device


def build_loss(args: argparse.Namespace, dim: int, gather: bool = False) -> AdaptiveInfoNCE | None:
    """None for SASRec; plain InfoNCE (``keep``) for DuoRec; AdaptiveInfoNCE with a ThresholdNet for AdaptiveRec.

    With `gather` (several processes) every row is scored against the whole global batch.
    """
    if args.loss == "none":
        return None
    if args.loss == "duorec":
        if args.known_positives != "none":  # InfoNCE with its known false negatives handled, no threshold
            return AdaptiveInfoNCE(
                threshold="labels",
                false_negatives=args.false_negatives,
                temperature=args.temperature,
                similarity=args.similarity,
            )
        return AdaptiveInfoNCE(
            threshold=None,
            false_negatives="keep",
            temperature=args.temperature,
            similarity=args.similarity,
            gather_distributed=gather,
        )
    net = ThresholdNet(
        dim,
        arch=args.threshold_arch,
        similarity=args.similarity,
        batch_size=args.batch_size if args.threshold_arch in ("flat", "authors") else None,
    )
    return AdaptiveInfoNCE(
        threshold=net,
        temperature=args.temperature,
        similarity=args.similarity,
        false_negatives=args.false_negatives,
        mask=args.mask,
        mask_gradient=args.mask_gradient,
        warmup_epochs=args.warmup_epochs,
        gather_distributed=gather,
        **recipes.adaptive_loss_options(args),
    )


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so an interrupt never leaves a half-written checkpoint."""
    checkpoint.save(obj, path)


def write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)
    except OSError as error:
        reason = error.strerror or error
        raise SystemExit(f"error: cannot write {path} ({reason}): free space or pick a writable --out") from error


# -------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One training run: model, loss, optimiser, data, history, checkpoints.

    `ranks` places it among torchrun's processes (default: alone); see parallel.py.
    """

    def __init__(
        self, args: argparse.Namespace, data: datasets.SequenceData, ranks: parallel.Ranks | None = None
    ) -> None:
        self.args = args
        self.data = data
        self.ranks = ranks or parallel.Ranks(pick_device(args.device))
        self.device = self.ranks.device
        self.out = Path(args.out)
        if self.ranks.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.bucket_edges = () if args.no_bucketing else datasets.BUCKET_EDGES

        self.train_set = datasets.train_samples(data, args.max_len)
        if len(self.train_set) < 2:
            raise SystemExit("error: the dataset has fewer than 2 training samples")
        self.sampler = SameTargetSampler(self.train_set.target)
        counts = data.item_counts()
        self.valid_set: EvalSet = make_eval_set(datasets.eval_samples(data, "valid", args.max_len), counts)
        self.test_set: EvalSet = make_eval_set(datasets.eval_samples(data, "test", args.max_len), counts)

        torch.manual_seed(args.seed)
        self.model = DuoRec(
            data.n_items,
            max_len=args.max_len,
            dropout=args.dropout,
            attn_dropout=args.dropout,
            mask_token=augment.needs_mask_token(vars(args)),
        )
        self.model.to(self.device)
        self.loss_fn = build_loss(args, dim=64, gather=self.ranks.distributed)
        # CL4SRec's views (augmented copies of the batch's sequences), or None for the other views.
        self.cl4srec = augment.CL4SRecViews.for_run(
            vars(args), data.items, self.train_set, self.model, self.bucket_edges
        )
        if self.loss_fn is not None:
            self.loss_fn.to(self.device)
        if self.ranks.distributed:
            torch.manual_seed(self.ranks.seed(args.seed))  # dropout: each rank its own reproducible masks
        self.encoder = self.ranks.wrap(self.model)  # model.encode; in DDP under torchrun
        params = list(self.model.parameters()) + (list(self.loss_fn.parameters()) if self.loss_fn is not None else [])
        self.optimizer = torch.optim.Adam(params, lr=args.lr)

        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self.best_epoch = 0
        self.best_score = -1.0
        self.bad_epochs = 0
        self.stopped = False
        # --time-budget: a perf_counter deadline (set by `main`), and whether training stopped at it.
        self.deadline: float | None = None
        self.out_of_time = False
        self.probe_rows, self.probe_partners = self._probe_rows()

    # -------------------------------------------------------------------------------- batches
    def _batch(self, rows: np.ndarray) -> datasets.Batch:
        s = self.train_set
        return datasets.make_batch(self.data.items, s.end[rows], s.length[rows], self.bucket_edges).to(self.device)

    def _epoch_batches(self, generator: torch.Generator) -> list[np.ndarray]:
        order = torch.randperm(len(self.train_set), generator=generator).numpy()
        size = self.args.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        fixed_size = self.args.drop_last or (
            self.loss_fn is not None and self.args.loss == "adaptive" and self.args.threshold_arch != "set"
        )
        if batches and (len(batches[-1]) < self.ranks.min_rows() or (fixed_size and len(batches[-1]) < size)):
            batches.pop()  # the loss needs B >= 2 (and a row per rank); a flat ThresholdNet needs exactly B rows
        if not batches:
            raise SystemExit(f"error: no full batch of {size}: lower --batch-size")
        return batches[: self.args.max_steps] if self.args.max_steps else batches

    def forward(
        self, rows: np.ndarray, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None, Tensor | None, np.ndarray]:
        """Encode a batch and its contrastive views in one pass over the stacked inputs.

        Returns `h` `(B, D)` for the next-item loss, the two views `z1`, `z2` (None without a
        contrastive loss) and the training samples behind `z2`. The passes of DuoRec (``un``: the
        sequence twice; ``su``: the sequence and a same-target sequence; ``us_x``: the sequence for the
        next-item loss, a second dropout pass of it and a same-target sequence) and of CL4SRec (the
        sequence and two augmentations of it, augment.py) are stacked into one batch: every row gets
        its own dropout mask, so this equals separate passes, with one encoder call instead of two or three.

        Under torchrun `rows` is the global batch: every rank draws the same partners (and CL4SRec
        views) for all of it and encodes its own slice; `h`, `z1`, `z2` are this rank's rows, the
        partners those of the whole batch.
        """
        if self.loss_fn is None:
            return self.encoder(self._batch(self.ranks.shard(rows))), None, None, rows
        if self.cl4srec is not None:  # the sequences, then two augmentations of each: both views are the row's own
            mine = slice(*self.ranks.bounds(len(rows)))
            batch = self.cl4srec.batch(rows, generator, part=mine).to(self.device)
            h, z1, z2 = self.encoder(batch).split(mine.stop - mine.start)
            return h, z1, z2, rows
        contrast = self.args.contrast
        partners = rows if contrast == "un" else self.sampler.sample(rows, generator)
        mine, theirs = self.ranks.shard(rows), self.ranks.shard(partners)
        stacked = {"un": [mine, mine], "su": [mine, theirs], "us_x": [mine, mine, theirs]}[contrast]
        views = self.encoder(self._batch(np.concatenate(stacked))).split(len(mine))
        z1, z2 = views[-2], views[-1]  # un, su: the first pass is also z1; us_x: a fresh dropout view
        return views[0], z1, z2, partners

    def known_positive_labels(self, rows: np.ndarray) -> Tensor | None:
        """`(B,)` labels of the batch's sequences for the loss (``--known-positives``), or None.

        ``same-target``: the target item of each sequence (its same-target partner view shares it);
        ``intent``: the latent intent of the sequence's user (synthetic data).
        """
        kind = self.args.known_positives
        if kind == "none":
            return None
        if kind == "same-target":
            values = self.train_set.target[rows]
        else:
            assert self.data.intents is not None
            values = self.data.intents[self.train_set.user[rows]]
        return torch.as_tensor(values, device=self.device)

    def _labels(self, rows: np.ndarray, partners: np.ndarray) -> Tensor | None:
        intents = self.data.intents
        if intents is None:
            return None
        users = np.concatenate([self.train_set.user[rows], self.train_set.user[partners]])
        return torch.as_tensor(intents[users], device=self.device)

    # -------------------------------------------------------------------------------- training
    def train_epoch(self) -> dict[str, Any]:
        """One pass over the training samples; returns the epoch's averaged losses and diagnostics."""
        args = self.args
        self.model.train()
        if self.loss_fn is not None:
            self.loss_fn.train()
        generator = torch.Generator().manual_seed(args.seed * 100_003 + self.epoch)
        meter = diagnostics.EpochMeter()
        lr = recipes.learning_rate(args, self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        meter.add(lr=lr)
        bar = tqdm(
            self._epoch_batches(generator),
            desc=f"epoch {self.epoch + 1}",
            leave=False,
            disable=True if args.quiet or not self.ranks.main else None,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        for rows in bar:
            mine = self.ranks.shard(rows)  # this rank's rows of the global batch (all of them in one process)
            targets = torch.as_tensor(self.train_set.target[mine], device=self.device)
            h, z1, z2, partners = self.forward(rows, generator)
            # The mean over the global batch: under torchrun this rank's share times the world size, as the
            # contrastive loss returns it, so that DDP's average over ranks is the single-process gradient.
            ce = self.model.next_item_loss(h, targets) * self.ranks.row_weight(len(mine), len(rows))
            loss = ce
            if self.loss_fn is not None:
                assert z1 is not None and z2 is not None
                known = self.known_positive_labels(rows)  # of the whole batch; the loss takes this rank's
                mine_known = None if known is None else known[slice(*self.ranks.bounds(len(rows)))]
                g_input = h if args.threshold_input == "next-item" else None  # what the ThresholdNet reads
                cl = self.loss_fn(z1, z2, labels=mine_known, threshold_input=g_input)
                loss = ce + args.lmd * cl
                self._record(meter, z1, z2, self._labels(rows, partners), cl, len(rows), known)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.loss_fn is not None:
                self.ranks.average_gradients(self.loss_fn.parameters())  # DDP averages the model's
            self.optimizer.step()
            meter.add(loss=float(loss.detach()), ce=float(ce.detach()))
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
            if self.deadline is not None and time.perf_counter() > self.deadline:
                self.out_of_time = True  # --time-budget: this (partial) epoch is validated, then training stops
                break
        caught: list[warnings.WarningMessage] = []
        if self.loss_fn is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.loss_fn.end_epoch()
            if self.ranks.main:
                for warning in caught:  # e.g. the loss's collapse warning: kept in results.json and shown
                    tqdm.write(f"warning: {warning.message}")
        self.ranks.average_meter(meter)
        summary: dict[str, Any] = dict(meter.summary())
        if caught:
            summary["warnings"] = [str(warning.message) for warning in caught]
        return summary

    def _record(
        self,
        meter: diagnostics.EpochMeter,
        z1: Tensor,
        z2: Tensor,
        labels: Tensor | None,
        cl: Tensor,
        total: int,
        known: Tensor | None = None,
    ) -> None:
        """Per-batch diagnostics from the loss's `last` (k_stat, k_learn, k, suspected share) and, with
        true intents (`labels` of the whole batch), the false-negative counts of what the loss flagged
        (thresholds and the known positives `known` of the whole batch).

        Under torchrun the thresholds and views of the `total` rows are gathered, and the per-row shares
        are weighted like the losses, so that the averages over ranks are the single-process values.
        """
        assert self.loss_fn is not None
        last = self.loss_fn.last
        assert last is not None
        k_learn = None if last.k_learn is None else self.ranks.gather_rows(last.k_learn, total)
        k = self.ranks.gather_halves(last.k, total)
        share = self.ranks.row_weight(z1.shape[0], total)
        meter.add(
            cl=float(cl.detach()),
            loss_learn=float(last.loss_learn),
            loss_reg=float(last.loss_reg),
            k_stat=float(last.k_stat),
            k_bar=float(last.k_bar),
            k_learn=None if k_learn is None else float(k_learn.mean()),
            k_learn_std=None if k_learn is None else float(k_learn.std()),
            k=float(k.mean()),
            suspected_fraction=float(last.false_negative_fraction) * share,
            known_fraction=None
            if last.known_positive_fraction is None
            else float(last.known_positive_fraction) * share,
        )
        if labels is not None and last.mode != "keep":
            z1, z2 = self.ranks.gather_rows(z1.detach(), total), self.ranks.gather_rows(z2.detach(), total)
            sims = diagnostics.similarities(z1, z2, self.args.similarity)
            row_known = None if known is None else known.repeat(2)
            meter.add_false_negatives(diagnostics.false_negative_counts(sims, k.float(), labels, row_known))

    # -------------------------------------------------------------------------------- probe
    def _probe_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """A fixed batch of training samples (and fixed same-target partners) for per-epoch diagnostics."""
        generator = torch.Generator().manual_seed(12_345)
        size = min(self.args.batch_size, len(self.train_set))
        rows = torch.randperm(len(self.train_set), generator=generator)[:size].numpy()
        return rows, self.sampler.sample(rows, generator)

    @torch.no_grad()
    def probe(self) -> dict[str, Any]:
        """Similarity histogram, k_stat, alignment and uniformity of the training views of the probe batch.

        Runs in training mode (the views are dropout views) with a fixed seed, outside the training RNG stream.
        """
        rows, partners = self.probe_rows, self.probe_partners
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.args.seed)
            self.model.train()
            if self.cl4srec is not None:  # the same two augmentations of the probe rows every epoch
                views = self.cl4srec.batch(rows, torch.Generator().manual_seed(12_345), with_inputs=False)
                first, other = self.model.encode(views.to(self.device)).split(len(rows))
                return diagnostics.probe(first, other, self.args.similarity)
            # su and us_x: a dropout view against the same-target view; un: two dropout views.
            second = rows if self.args.contrast == "un" else partners
            first, other = self.model.encode(self._batch(np.concatenate([rows, second]))).split(len(rows))
        return diagnostics.probe(first, other, self.args.similarity)

    # -------------------------------------------------------------------------------- loop
    def fit(self) -> None:
        args = self.args
        while self.epoch < args.epochs and not self.stopped and not self.out_of_time:
            if self.deadline is not None and self.history:
                last = self.history[-1]
                if time.perf_counter() + last["train_time_s"] + last["eval_time_s"] > self.deadline:
                    self.out_of_time = True  # another epoch would not fit in --time-budget
                    break
            start = time.perf_counter()
            train = self.train_epoch()
            train_time = time.perf_counter() - start
            self.epoch += 1
            probe = self.probe() if self.ranks.main else {}  # only rank 0 writes the history
            start = time.perf_counter()
            valid = self.ranks.evaluate(self.model, self.data.items, self.valid_set, bucket_edges=self.bucket_edges)
            eval_time = time.perf_counter() - start
            score = valid[args.early_stop_metric]
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
                if self.ranks.main:
                    loss_state = None if args.no_checkpoints else self._loss_state()
                    atomic_save(
                        {"model": self.model.state_dict(), "loss_fn": loss_state, "epoch": self.epoch},
                        self.out / "best.pt",
                    )
            else:
                self.bad_epochs += 1
                self.stopped = self.bad_epochs >= args.patience
            self.history.append(
                {
                    "epoch": self.epoch,
                    "train_time_s": round(train_time, 2),
                    "eval_time_s": round(eval_time, 2),
                    "mode": self.loss_mode(),
                    "train": train,
                    "probe": probe,
                    "valid": valid,
                }
                | ({"partial": True} if self.out_of_time else {})  # cut short by --time-budget
            )
            if not args.no_checkpoints:
                self.save_checkpoint()
            if self.ranks.main:
                self.write_results()
                self._log(train, valid, train_time, improved)

    def _log(self, train: dict[str, Any], valid: dict[str, float], seconds: float, improved: bool) -> None:
        parts = [f"epoch {self.epoch:3d}", f"{seconds:6.1f}s", f"loss {train['loss']:.4f}", f"ce {train['ce']:.4f}"]
        for name in ("k_stat", "k_learn", "fn_precision", "fn_recall"):
            if train.get(name) is not None:
                parts.append(f"{name} {train[name]:.3f}")
        parts.append(
            f"valid NDCG@10 {valid['NDCG@10']:.4f} Recall@10 {valid['Recall@10']:.4f}" + (" *" if improved else "")
        )
        tqdm.write(" | ".join(parts))

    def loss_mode(self) -> str | None:
        """The false-negative mode the loss ran in during the last epoch (``keep`` during warm-up), if any."""
        last = None if self.loss_fn is None else self.loss_fn.last
        return None if last is None else last.mode

    def _loss_state(self) -> dict[str, Tensor] | None:
        return None if self.loss_fn is None else self.loss_fn.state_dict()

    # -------------------------------------------------------------------------------- checkpoints
    def config(self) -> dict[str, Any]:
        return dict(vars(self.args))

    def save_checkpoint(self) -> None:
        """`last.pt`: everything needed to continue after this epoch (an interrupt loses at most one epoch).

        Plain types and tensors only, so that it loads with ``weights_only=True``. Under torchrun every
        rank's RNG states are gathered and rank 0 writes the file.
        """
        rng_ranks = self.ranks.gather_states(torch.get_rng_state())
        on_gpu = self.device.type == "cuda"
        cuda_rng_ranks = self.ranks.gather_states(torch.cuda.get_rng_state(self.device)) if on_gpu else None
        if not self.ranks.main:
            return
        atomic_save(
            {
                "config": self.config(),
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "loss_fn": self._loss_state(),
                "optimizer": self.optimizer.state_dict(),
                "history": self.history,
                "best": {"epoch": self.best_epoch, "score": self.best_score, "bad_epochs": self.bad_epochs},
                "stopped": self.stopped,
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "world_size": self.ranks.world,
                "rng_ranks": rng_ranks if self.ranks.distributed else None,
                "cuda_rng_ranks": cuda_rng_ranks if self.ranks.distributed else None,
            },
            self.out / "last.pt",
        )

    def resume(self) -> bool:
        """Load `last.pt` if present; returns whether it did.

        Under torchrun every rank loads it (``--out`` must be on a filesystem they all see) and takes its
        own RNG states back, if the run had as many ranks.
        """
        path = self.out / "last.pt"
        found = path.is_file()
        if not self.ranks.agree(found):
            raise SystemExit(
                f"error: --resume: not every rank sees {path}; under torchrun on several machines --out must be "
                "on a filesystem they share"
            )
        if not found:
            if self.ranks.main:
                tqdm.write(f"--resume: no checkpoint at {path}, starting from scratch")
            return False
        state = checkpoint.load(path, self.device, required=CHECKPOINT_KEYS)
        saved, now = state["config"], self.config()
        if not isinstance(saved, dict):
            raise SystemExit(f"error: {path} holds no configuration: delete it (or pick another --out) and train again")
        defaults = vars(parse_args([]))  # settings added after the checkpoint was written had their default
        # The synthetic generator's knobs change nothing on a real dataset.
        unused = {k for k in now if k.startswith("synthetic_")} if now.get("dataset") != "synthetic" else set()
        changed = {
            k: (saved.get(k, defaults.get(k)), v)
            for k, v in now.items()
            if k not in RESUMABLE | unused and saved.get(k, defaults.get(k)) != v
        }
        if changed:
            raise SystemExit(
                f"error: --resume: {path} was trained with different settings {changed}; use another --out"
            )
        try:
            self._load_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise SystemExit(
                f"error: {path} does not fit this run ({checkpoint.first_line(error)}): delete it (or pick another "
                "--out) and train again"
            ) from None
        if self.ranks.main:
            tqdm.write(f"resumed from {path} after epoch {self.epoch}")
        return True

    def _load_state(self, state: dict[str, Any]) -> None:
        """Model, loss, optimiser, history, early stopping and RNG states of a `last.pt`."""
        self.model.load_state_dict(state["model"])
        if self.loss_fn is not None:
            self.loss_fn.load_state_dict(state["loss_fn"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.history, self.stopped = state["epoch"], state["history"], state["stopped"]
        best = state["best"]
        self.best_epoch, self.best_score, self.bad_epochs = best["epoch"], best["score"], best["bad_epochs"]
        ranks, world = self.ranks, state.get("world_size", 1)
        if not ranks.distributed:
            torch.set_rng_state(state["rng"].cpu())  # map_location may have moved the RNG states
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        elif world == ranks.world:
            torch.set_rng_state(state["rng_ranks"][ranks.rank].cpu())
            if state.get("cuda_rng_ranks") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng_ranks"][ranks.rank].cpu(), self.device)
        else:  # another number of ranks: fresh, reproducible dropout streams
            torch.manual_seed(ranks.seed(self.args.seed) + self.epoch)
            if ranks.main:
                tqdm.write(f"--resume: the checkpoint was written by {world} process(es), this run has {ranks.world}")

    # -------------------------------------------------------------------------------- results
    def results(self) -> dict[str, Any]:
        times = [h["train_time_s"] for h in self.history]
        return {
            "config": self.config(),
            "world_size": self.ranks.world,
            "dataset": self.data.stats(),
            "train_samples": len(self.train_set),
            "epochs_done": self.epoch,
            "best_epoch": self.best_epoch,
            "epoch_time_s": round(float(np.mean(times)), 2) if times else None,
            "history": self.history,
        }

    def write_results(self, final: dict[str, Any] | None = None) -> dict[str, Any]:
        results = self.results() | (final or {"status": "running"})
        write_json(results, self.out / "results.json")
        return results

    def finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on validation and test, write results.json and the plots.

        Under torchrun rank 0 reads best.pt and sends its weights to the other ranks.
        """
        best_path = self.out / "best.pt"
        if self.ranks.main and best_path.is_file():
            best = checkpoint.load(best_path, self.device, required=("model",))
            try:
                self.model.load_state_dict(best["model"])
                if self.loss_fn is not None and best.get("loss_fn") is not None:
                    self.loss_fn.load_state_dict(best["loss_fn"])
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                raise SystemExit(
                    f"error: {best_path} does not fit this run ({checkpoint.first_line(error)}): delete it and "
                    "train again"
                ) from None
        self.ranks.broadcast_module(self.model)
        kwargs = {"bucket_edges": self.bucket_edges}
        valid = self.ranks.evaluate(self.model, self.data.items, self.valid_set, **kwargs)
        test = self.ranks.evaluate(self.model, self.data.items, self.test_set, **kwargs)
        status = "early stopped" if self.stopped else "time budget" if self.out_of_time else "finished"
        if not self.ranks.main:
            return self.results() | {"status": status, "valid": valid, "test": test}
        title = f"{self.args.dataset} · {self.args.loss} · {self.args.contrast}"
        try:
            pngs = [] if self.args.no_plots else plots.plot_all(self.history, self.out, title=title)
        except OSError as error:
            raise SystemExit(f"error: cannot write the plots into {self.out} ({error.strerror or error})") from error
        return self.write_results({"status": status, "valid": valid, "test": test, "plots": [p.name for p in pngs]})


def load_data(args: argparse.Namespace) -> datasets.SequenceData:
    """The command line's dataset; a missing, damaged or malformed file is a one-line error."""
    try:
        return datasets.load_dataset(
            args.dataset, args.data_path, fetch=args.download, **datasets.synthetic_options(vars(args))
        )
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    except OSError as error:
        raise SystemExit(
            f"error: cannot read {error.filename or args.data_path} ({error.strerror or error}): check the path and "
            "its permissions"
        ) from error


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the command line; returns what was printed as JSON (stats) or written to results.json.

    Every user-facing failure is a `SystemExit` with one line (exit code 1); under torchrun rank 0 prints it.
    """
    start_time = time.perf_counter()  # --time-budget counts data loading too
    args = parse_args(argv)
    ranks = parallel.start(pick_device(args.device))
    try:
        return run_command(args, ranks, start_time)
    except SystemExit as stop:
        if ranks.main or not isinstance(stop.code, str):
            raise
        raise SystemExit(1) from None  # rank 0 says why
    finally:
        ranks.stop()


def run_command(args: argparse.Namespace, ranks: parallel.Ranks, start_time: float) -> dict[str, Any]:
    """`main` in one process (of one or several)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    data = ranks.main_first(lambda: load_data(args))  # rank 0 first: a --download happens once
    assert data is not None
    if args.stats_only:
        stats = data.stats()
        if ranks.main:
            print(json.dumps(stats))
        return stats
    if ranks.distributed and args.loss == "adaptive" and args.threshold_arch != "set":
        raise SystemExit(
            f"error: --threshold-arch {args.threshold_arch} maps a whole batch to its thresholds and cannot be split "
            "across processes: use --threshold-arch set under torchrun"
        )
    if ranks.distributed and args.time_budget is not None:
        raise SystemExit("error: --time-budget stops mid-epoch on one process's clock: run it without torchrun")
    ranks.main_first(lambda: run_folder.prepare(Path(args.out), args.resume, args.overwrite), others=False)
    trainer = Trainer(args, data, ranks)
    if args.time_budget is not None:
        trainer.deadline = start_time + args.time_budget
    if args.resume:
        trainer.resume()
    if ranks.main:
        tqdm.write(
            f"{args.dataset}: {data.stats()} | {len(trainer.train_set)} training sequences | loss={args.loss} "
            f"contrast={args.contrast} similarity={args.similarity} device={trainer.device} "
            f"processes={ranks.world} -> {trainer.out}"
        )
    start = time.perf_counter()
    trainer.fit()
    results = trainer.finish()
    if ranks.main:
        print(
            f"\nbest epoch {trainer.best_epoch} of {trainer.epoch} ({results['status']}), "
            f"{time.perf_counter() - start:.0f}s; results in {trainer.out / 'results.json'}"
        )
        print(metrics_table(results["valid"], "valid"))
        print(metrics_table(results["test"], "test"))
    return results


if __name__ == "__main__":
    main()
