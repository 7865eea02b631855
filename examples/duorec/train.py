#!/usr/bin/env python
"""Train DuoRec with plain or adaptive InfoNCE (AdaptiveRec) and evaluate it the papers' way.

Examples (from the repository root):

    python examples/duorec/train.py                         # synthetic data, AdaptiveRec, ~1.5 min on 2 cores
    python examples/duorec/train.py --dataset beauty --data-path ../shared/data/beauty/Beauty.txt --loss duorec
    python examples/duorec/train.py --dataset beauty --stats-only   # {"users": ..., "items": ..., "interactions": ...}

Every run writes ``<out>/results.json`` (config, dataset statistics, per-epoch history with the
diagnostics, best-checkpoint ``valid`` and ``test`` metrics), the PNG plots, and checkpoints
``last.pt`` (every epoch; ``--resume`` continues from it) and ``best.pt``.
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
import data as datasets  # noqa: E402
import diagnostics  # noqa: E402
import plots  # noqa: E402
from evaluate import EvalSet, evaluate, make_eval_set, metrics_table  # noqa: E402
from model import DuoRec  # noqa: E402
from views import CONTRASTS, SameTargetSampler  # noqa: E402

LOSSES = ("none", "duorec", "adaptive")
FALSE_NEGATIVES = ("attract", "drop", "relabel")
KNOWN_POSITIVES = ("none", "same-target", "intent")
DEFAULT_EPOCHS = {"synthetic": 20, "ml-1m": 300, "beauty": 300}
# Arguments that may change between a run and its --resume.
RESUMABLE = {"resume", "epochs", "patience", "device", "out", "threads", "quiet", "stats_only", "download", "data_path"}


# ------------------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of the issue, plus a few extras (``--lr``, ``--max-len``, ``--max-steps``, ...)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=datasets.DATASETS, default="synthetic")
    p.add_argument(
        "--data-path",
        default=None,
        help="data file or folder (default: the download cache, then ../shared/data/<dataset>)",
    )
    p.add_argument("--download", action="store_true", help="fetch the official file (checked by md5 / record count)")
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default="adaptive",
        help="none = SASRec, duorec = plain InfoNCE, adaptive = AdaptiveRec",
    )
    p.add_argument("--contrast", choices=CONTRASTS, default="us_x", help="DuoRec's views")
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
        choices=("set", "flat"),
        default="set",
        help="ThresholdNet architecture (flat: drop_last batches)",
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
    p.add_argument("--stats-only", action="store_true", help="print the filtered dataset's statistics as JSON and exit")
    # extras
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-len", type=int, default=datasets.MAX_LEN)
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
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
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
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def build_loss(args: argparse.Namespace, dim: int) -> AdaptiveInfoNCE | None:
    """None for SASRec; plain InfoNCE (``keep``) for DuoRec; AdaptiveInfoNCE with a ThresholdNet for AdaptiveRec."""
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
            threshold=None, false_negatives="keep", temperature=args.temperature, similarity=args.similarity
        )
    net = ThresholdNet(
        dim,
        arch=args.threshold_arch,
        similarity=args.similarity,
        batch_size=args.batch_size if args.threshold_arch == "flat" else None,
    )
    return AdaptiveInfoNCE(
        threshold=net,
        temperature=args.temperature,
        similarity=args.similarity,
        false_negatives=args.false_negatives,
        mask=args.mask,
        mask_gradient=args.mask_gradient,
        warmup_epochs=args.warmup_epochs,
    )


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so an interrupt never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One training run: model, loss, optimiser, data, history, checkpoints."""

    def __init__(self, args: argparse.Namespace, data: datasets.SequenceData) -> None:
        self.args = args
        self.data = data
        self.device = pick_device(args.device)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.bucket_edges = () if args.no_bucketing else datasets.BUCKET_EDGES

        self.train_set = datasets.train_samples(data, args.max_len)
        if len(self.train_set) < 2:
            raise SystemExit("the dataset has fewer than 2 training samples")
        self.sampler = SameTargetSampler(self.train_set.target)
        counts = data.item_counts()
        self.valid_set: EvalSet = make_eval_set(datasets.eval_samples(data, "valid", args.max_len), counts)
        self.test_set: EvalSet = make_eval_set(datasets.eval_samples(data, "test", args.max_len), counts)

        torch.manual_seed(args.seed)
        self.model = DuoRec(data.n_items, max_len=args.max_len).to(self.device)
        self.loss_fn = build_loss(args, dim=64)
        if self.loss_fn is not None:
            self.loss_fn.to(self.device)
        params = list(self.model.parameters()) + (list(self.loss_fn.parameters()) if self.loss_fn is not None else [])
        self.optimizer = torch.optim.Adam(params, lr=args.lr)

        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self.best_epoch = 0
        self.best_score = -1.0
        self.bad_epochs = 0
        self.stopped = False
        self.probe_rows, self.probe_partners = self._probe_rows()

    # -------------------------------------------------------------------------------- batches
    def _batch(self, rows: np.ndarray) -> datasets.Batch:
        s = self.train_set
        return datasets.make_batch(self.data.items, s.end[rows], s.length[rows], self.bucket_edges).to(self.device)

    def _epoch_batches(self, generator: torch.Generator) -> list[np.ndarray]:
        order = torch.randperm(len(self.train_set), generator=generator).numpy()
        size = self.args.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        fixed_size = self.loss_fn is not None and self.args.threshold_arch == "flat"
        if batches and (len(batches[-1]) < 2 or (fixed_size and len(batches[-1]) < size)):
            batches.pop()  # the loss needs B >= 2; the flat ThresholdNet needs exactly B rows
        if not batches:
            raise SystemExit(f"no full batch of {size}: lower --batch-size")
        return batches[: self.args.max_steps] if self.args.max_steps else batches

    def forward(
        self, rows: np.ndarray, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None, Tensor | None, np.ndarray]:
        """Encode a batch and its contrastive views in one pass over the stacked inputs.

        Returns `h` `(B, D)` for the next-item loss, the two views `z1`, `z2` (None without a
        contrastive loss) and the training samples behind `z2`. The passes of DuoRec (``un``: the
        sequence twice; ``su``: the sequence and a same-target sequence; ``us_x``: the sequence for the
        next-item loss, a second dropout pass of it and a same-target sequence) are stacked into one
        batch: every row gets its own dropout mask, so this equals separate passes, with one encoder
        call instead of two or three.
        """
        if self.loss_fn is None:
            return self.model.encode(self._batch(rows)), None, None, rows
        contrast = self.args.contrast
        partners = rows if contrast == "un" else self.sampler.sample(rows, generator)
        stacked = {"un": [rows, rows], "su": [rows, partners], "us_x": [rows, rows, partners]}[contrast]
        views = self.model.encode(self._batch(np.concatenate(stacked))).split(len(rows))
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
        bar = tqdm(
            self._epoch_batches(generator),
            desc=f"epoch {self.epoch + 1}",
            leave=False,
            disable=True if args.quiet else None,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        for rows in bar:
            targets = torch.as_tensor(self.train_set.target[rows], device=self.device)
            h, z1, z2, partners = self.forward(rows, generator)
            ce = self.model.next_item_loss(h, targets)
            loss = ce
            if self.loss_fn is not None:
                assert z1 is not None and z2 is not None
                known = self.known_positive_labels(rows)
                cl = self.loss_fn(z1, z2, labels=known)
                loss = ce + args.lmd * cl
                self._record(meter, z1, z2, self._labels(rows, partners), cl, known)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            meter.add(loss=float(loss.detach()), ce=float(ce.detach()))
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        summary: dict[str, Any] = dict(meter.summary())
        if self.loss_fn is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.loss_fn.end_epoch()
            for warning in caught:  # e.g. the loss's collapse warning: kept in results.json and shown
                tqdm.write(f"warning: {warning.message}")
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
        known: Tensor | None = None,
    ) -> None:
        """Per-batch diagnostics from the loss's `last` (k_stat, k_learn, k, suspected share) and, with
        true intents, the false-negative counts of what the loss flagged (threshold and known positives)."""
        assert self.loss_fn is not None
        last = self.loss_fn.last
        assert last is not None
        k_learn = last.k_learn
        meter.add(
            cl=float(cl.detach()),
            loss_learn=float(last.loss_learn),
            loss_reg=float(last.loss_reg),
            k_stat=float(last.k_stat),
            k_bar=float(last.k_bar),
            k_learn=None if k_learn is None else float(k_learn.mean()),
            k_learn_std=None if k_learn is None else float(k_learn.std()),
            k=float(last.k.mean()),
            suspected_fraction=float(last.false_negative_fraction),
            known_fraction=None if last.known_positive_fraction is None else float(last.known_positive_fraction),
        )
        if labels is not None and last.mode != "keep":
            sims = diagnostics.similarities(z1.detach(), z2.detach(), self.args.similarity)
            row_known = None if known is None else known.repeat(2)
            meter.add_false_negatives(diagnostics.false_negative_counts(sims, last.k.float(), labels, row_known))

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
            # su and us_x: a dropout view against the same-target view; un: two dropout views.
            second = rows if self.args.contrast == "un" else partners
            first, other = self.model.encode(self._batch(np.concatenate([rows, second]))).split(len(rows))
        return diagnostics.probe(first, other, self.args.similarity)

    # -------------------------------------------------------------------------------- loop
    def fit(self) -> None:
        args = self.args
        while self.epoch < args.epochs and not self.stopped:
            start = time.perf_counter()
            train = self.train_epoch()
            train_time = time.perf_counter() - start
            self.epoch += 1
            probe = self.probe()
            start = time.perf_counter()
            valid = evaluate(self.model, self.data.items, self.valid_set, self.device, bucket_edges=self.bucket_edges)
            eval_time = time.perf_counter() - start
            score = valid["NDCG@10"]
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
                atomic_save(
                    {"model": self.model.state_dict(), "loss_fn": self._loss_state(), "epoch": self.epoch},
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
            )
            self.save_checkpoint()
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
        """`last.pt`: everything needed to continue after this epoch (an interrupt loses at most one epoch)."""
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
            },
            self.out / "last.pt",
        )

    def resume(self) -> bool:
        """Load `last.pt` if present; returns whether it did."""
        path = self.out / "last.pt"
        if not path.is_file():
            tqdm.write(f"--resume: no checkpoint at {path}, starting from scratch")
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        saved, now = state["config"], self.config()
        changed = {k: (saved.get(k), v) for k, v in now.items() if k not in RESUMABLE and saved.get(k) != v}
        if changed:
            raise SystemExit(f"--resume: {path} was trained with different settings {changed}; use another --out")
        self.model.load_state_dict(state["model"])
        if self.loss_fn is not None:
            self.loss_fn.load_state_dict(state["loss_fn"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.history, self.stopped = state["epoch"], state["history"], state["stopped"]
        best = state["best"]
        self.best_epoch, self.best_score, self.bad_epochs = best["epoch"], best["score"], best["bad_epochs"]
        torch.set_rng_state(state["rng"].cpu())  # map_location may have moved the RNG states
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        tqdm.write(f"resumed from {path} after epoch {self.epoch}")
        return True

    # -------------------------------------------------------------------------------- results
    def results(self) -> dict[str, Any]:
        times = [h["train_time_s"] for h in self.history]
        return {
            "config": self.config(),
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
        """Evaluate the best checkpoint on validation and test, write results.json and the plots."""
        best_path = self.out / "best.pt"
        if best_path.is_file():
            best = torch.load(best_path, map_location=self.device, weights_only=False)
            self.model.load_state_dict(best["model"])
            if self.loss_fn is not None and best["loss_fn"] is not None:
                self.loss_fn.load_state_dict(best["loss_fn"])
        kwargs = {"bucket_edges": self.bucket_edges}
        valid = evaluate(self.model, self.data.items, self.valid_set, self.device, **kwargs)
        test = evaluate(self.model, self.data.items, self.test_set, self.device, **kwargs)
        pngs = plots.plot_all(
            self.history, self.out, title=f"{self.args.dataset} · {self.args.loss} · {self.args.contrast}"
        )
        status = "early stopped" if self.stopped else "finished"
        return self.write_results({"status": status, "valid": valid, "test": test, "plots": [p.name for p in pngs]})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the command line; returns what was printed as JSON (stats) or written to results.json."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = datasets.load_dataset(args.dataset, args.data_path, fetch=args.download, n_users=args.synthetic_users)
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    if args.stats_only:
        stats = data.stats()
        print(json.dumps(stats))
        return stats
    trainer = Trainer(args, data)
    if args.resume:
        trainer.resume()
    tqdm.write(
        f"{args.dataset}: {data.stats()} | {len(trainer.train_set)} training sequences | loss={args.loss} "
        f"contrast={args.contrast} similarity={args.similarity} device={trainer.device} -> {trainer.out}"
    )
    start = time.perf_counter()
    trainer.fit()
    results = trainer.finish()
    print(
        f"\nbest epoch {trainer.best_epoch} of {trainer.epoch} ({results['status']}), "
        f"{time.perf_counter() - start:.0f}s; results in {trainer.out / 'results.json'}"
    )
    print(metrics_table(results["valid"], "valid"))
    print(metrics_table(results["test"], "test"))
    return results


if __name__ == "__main__":
    main()
