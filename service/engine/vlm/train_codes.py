"""The tiny VLM's training recipe: a code table, then regression onto it (engine venv).

    python train_codes.py GEMMA_DIR OUT.safetensors [--code-steps N] [--steps N] [--seed S] ...

The committed weights come from this script's runs in `TRAIN_RECIPE` (service/engine/vlm/
prepare.py, which also runs them when the weights file is missing). It replaced train.py's
recipe (backpropagating through the LM for every picture), which stalled at difficulty-0 accuracy
0.55 in the time it had (docs/engine.md has both runs' numbers).

Only the vision parameters learn; the language model is frozen. The LM is only in the loop
where it is cheap:

1. *Code table, no pictures.* The 16 image tokens are 4 slots of 4 tokens, one slot per question
   family (model.SLOTS). A table E[family] of 5 × 4 token embeddings (the family's 4 values +
   "absent") is learnt through the frozen LM: for random combinations of values (and random
   mixtures of them, with the mixture as soft target) the image tokens are the slots' embeddings
   and E gets the LM's cross-entropy on the answer letter of every family's question. ~51 k
   parameters; the question's KV cache is computed once per family, so a step runs only the 16
   image tokens and the answer cue through the LM (bf16 autocast: ~3× faster than fp32 here).
2. *Tower + projector regression, no LM.* The CLIP tower + LLaVA projector learn to output, for
   each slot, E[family][true value] (mean squared error; a slot whose value the picture does not
   define regresses, with a smaller weight, to the mean of the family's four values). The MSE
   optimum is the conditional mean sum_v p(v|picture) E[v], so an ambiguous picture gives a
   blend of codes, which stage 1 taught the LM to answer with a blended distribution. An
   auxiliary 5-way head per slot speeds up the tower's features (`--mse 0` trains the heads
   alone: a tower pre-training run).
3. *Optional LM-in-the-loop tune* (`--tune-steps`): the LM's cross-entropy on real pictures into
   the projector only.

Pictures come from `service/datasets/vision.py` (loaded by path) with training seed streams that
never produce the evaluation seeds' pictures. Seeded: the same arguments and thread count give
the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from model import (
    IMAGE_SIZE,
    IMAGE_TOKENS,
    SLOT_TOKENS,
    SLOTS,
)
from train import (  # the same pictures, prompts, LM and weight files as train.py
    LETTERS,
    load,
    pixels,
    save,
)
from train import Trainer as BaseTrainer

VALUES = len(LETTERS)  # a family's 4 values + absent (answer E)
ABSENT = VALUES - 1
#: How often each difficulty is drawn in training.
TRAIN_DIFFICULTY_WEIGHTS = (0.3, 0.25, 0.25, 0.2)


class Trainer(BaseTrainer):
    """train.py's frozen LM and vision modules, plus the code table; the LM runs in bf16."""

    bf16 = True

    def __init__(self, gemma_dir: str, seed: int) -> None:
        super().__init__(gemma_dir, seed)
        assert tuple(self.vision.FAMILIES) == SLOTS
        self.codes = torch.nn.Parameter(self._initial_codes())

    def _initial_codes(self) -> torch.Tensor:
        """(families, 5, SLOT_TOKENS, hidden): each value starts as the LM's own (scaled)
        embedding of its words, so stage 1 starts from a meaningful prompt."""
        rows = []
        for family in SLOTS:
            words = [*self.vision.FAMILY_CHOICES[family], "nothing"]
            values = []
            for word in words:
                ids = self.tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
                ids = (ids * SLOT_TOKENS)[:SLOT_TOKENS]
                with torch.no_grad():
                    values.append(self.embed(torch.tensor([ids]))[0])
            rows.append(torch.stack(values))
        return torch.stack(rows).clone()

    def slot_tokens(self, weights: torch.Tensor) -> torch.Tensor:
        """Image tokens (batch, 16, hidden) for value mixtures `weights` (batch, families, 5)."""
        mixed = torch.einsum("bfv,fvth->bfth", weights, self.codes)
        return mixed.reshape(weights.shape[0], IMAGE_TOKENS, -1)


def cosine_lr(base: float, step: int, steps: int, warmup: int) -> float:
    return base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


# -- stage 1: the code table through the frozen LM ----------------------------------------------


def sample_mixtures(rng: random.Random, batch: int, mix: float) -> torch.Tensor:
    """(batch, families, 5) value weights: one-hot combinations, some soft blends, some absent."""
    out = torch.zeros(batch, len(SLOTS), VALUES)
    for b in range(batch):
        if rng.random() < 0.1:
            out[b, :, ABSENT] = 1.0
            continue
        for f in range(len(SLOTS)):
            if rng.random() < mix:  # a blend of two or three values (an ambiguous picture)
                picks = rng.sample(range(VALUES), rng.choice((2, 2, 3)))
                raw = [rng.random() + 0.05 for _ in picks]
                for v, w in zip(picks, raw, strict=True):
                    out[b, f, v] = w / sum(raw)
            else:
                out[b, f, rng.randrange(VALUES - 1)] = 1.0
    return out


def train_codes(trainer: Trainer, args: argparse.Namespace) -> dict[str, object]:
    """Stage 1: learn E so the frozen LM answers every family's question from its slot."""
    opt = torch.optim.Adam([trainer.codes], lr=args.code_lr)
    rng = random.Random(f"codes:{args.seed}")
    letters = torch.tensor(trainer.prompts.letters)
    t0 = time.monotonic()
    history: list[tuple[float, float]] = []
    for step in range(args.code_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(args.code_lr, step, args.code_steps, 20)
        weights = sample_mixtures(rng, args.code_batch, args.code_mix)
        tokens = trainer.slot_tokens(weights)
        losses, right, total = [], 0, 0
        for f, family in enumerate(SLOTS):
            target = weights[:, f]  # soft target over the 5 answer letters
            logp = F.log_softmax(trainer.logits(family, tokens), dim=-1)[:, letters]
            losses.append(-(target * logp).sum(-1).mean())
            hard = target.max(-1).values > 0.99
            right += int((logp.argmax(-1) == target.argmax(-1))[hard].sum())
            total += int(hard.sum())
        loss = torch.stack(losses).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((loss.item(), right / max(1, total)))
        if (step + 1) % 10 == 0:
            recent = history[-10:]
            print(
                f"codes {step + 1}/{args.code_steps} loss {np.mean([h[0] for h in recent]):.3f} "
                f"acc {np.mean([h[1] for h in recent]):.3f} {time.monotonic() - t0:.0f}s",
                flush=True,
            )
    return {"seconds": round(time.monotonic() - t0, 1), "final_acc": history[-1][1]}


@torch.no_grad()
def codes_report(trainer: Trainer, n: int) -> dict[str, float]:
    """Accuracy and letter-mass of the code table on fresh one-hot combinations."""
    weights = sample_mixtures(random.Random("codes-check"), n, 0.0)
    tokens = trainer.slot_tokens(weights)
    letters = torch.tensor(trainer.prompts.letters)
    out: dict[str, float] = {}
    for f, family in enumerate(SLOTS):
        p = F.softmax(trainer.logits(family, tokens), dim=-1)[:, letters]
        out[family] = round(float((p.argmax(-1) == weights[:, f].argmax(-1)).float().mean()), 3)
        out[f"{family}_p"] = round(float(p.max(-1).values.mean()), 3)
    return out


# -- stage 2: tower + projector regression onto the codes ---------------------------------------


def sample_pictures(
    trainer: Trainer, rng: random.Random, batch: int, blank_share: float = 0.0
) -> tuple[list, list[dict[str, int | None]], list[int]]:  # type: ignore[type-arg]
    """Pictures from every family's generator, each with all the answers it defines; a
    `blank_share` of them show nothing to recognise (`blank_picture`), answer E for every
    question."""
    vision = trainer.vision
    images: list = []  # type: ignore[type-arg]
    attributes: list[dict[str, int | None]] = []
    levels: list[int] = []
    for _ in range(batch):
        if blank_share and rng.random() < blank_share:
            images.append(blank_picture(rng))
            attributes.append(dict.fromkeys(SLOTS, ABSENT))
            levels.append(-1)
            continue
        family = rng.choice(vision.FAMILIES)
        level = rng.choices(vision.DIFFICULTIES, TRAIN_DIFFICULTY_WEIGHTS)[0]
        scene = vision.draw_scene(family, level, rng, rng.random() >= 0.1)
        images.append(scene.image)
        attributes.append(scene.attributes)
        levels.append(level)
    return images, attributes, levels


def blank_picture(rng: random.Random) -> Image.Image:
    """A picture with no shape in it: one flat colour, or uniform pixel noise.

    The generator's unanswerable pictures are all its light-grey background; without these the
    tower has never seen another empty frame and maps one to codes the LM reads as no letter at
    all. An empty frame of any colour, or static, should read as "I don't know" (E) — which is also
    what the gateway's visual-reliance probe shows the model (its blank and noise perturbations).
    """
    size = IMAGE_SIZE
    if rng.random() < 0.5:
        colour = tuple(rng.randrange(256) for _ in range(3))
        return Image.new("RGB", (size, size), colour)  # type: ignore[arg-type]
    noise = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size, size, 3))
    return Image.fromarray(noise.astype(np.uint8), "RGB")


def regression_targets(
    trainer: Trainer, attributes: list[dict[str, int | None]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(targets (b, 16, h), weights (b, 16), labels (b, families; -1 = undefined))."""
    codes = trainer.codes.detach()
    undefined = codes[:, :ABSENT].mean(1)  # (families, tokens, h)
    targets, weights, labels = [], [], []
    for a in attributes:
        rows, w, lab = [], [], []
        for f, family in enumerate(SLOTS):
            value = a[family]
            rows.append(undefined[f] if value is None else codes[f, value])
            w += [0.3 if value is None else 1.0] * SLOT_TOKENS
            lab.append(-1 if value is None else value)
        targets.append(torch.cat(rows))
        weights.append(w)
        labels.append(lab)
    return torch.stack(targets), torch.tensor(weights), torch.tensor(labels)


def train_tower(trainer: Trainer, args: argparse.Namespace) -> dict[str, object]:
    """Stage 2: projector output slot f ≈ E[f][value] (MSE) + auxiliary per-slot heads."""
    width = trainer.tower.config.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(width * SLOT_TOKENS, VALUES) for _ in SLOTS])
    params = [*trainer.tower.parameters(), *trainer.projector.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    rng = random.Random(f"tower:{args.seed}")
    scale = float(trainer.codes.detach().pow(2).mean())
    t0 = time.monotonic()
    history: list[tuple[float, float]] = []
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(args.lr, step, args.steps, 100)
        images, attributes, _ = sample_pictures(trainer, rng, args.batch, args.blank_share)
        targets, weights, labels = regression_targets(trainer, attributes)
        out = trainer.tower(pixel_values=pixels(images), output_hidden_states=True)
        hidden = out.hidden_states[-1][:, 1:]
        feats = trainer.projector(hidden)
        mse = ((feats - targets).pow(2).mean(-1) * weights).sum() / weights.sum() / scale
        aux, right, total = [], 0, 0
        for f in range(len(SLOTS)):
            rows = labels[:, f] >= 0
            if not rows.any():
                continue
            slot = hidden[rows, f * SLOT_TOKENS : (f + 1) * SLOT_TOKENS].flatten(1)
            logits = heads[f](slot)
            aux.append(F.cross_entropy(logits, labels[rows, f], reduction="sum"))
            right += int((logits.argmax(-1) == labels[rows, f]).sum())
            total += int(rows.sum())
        loss = args.mse * mse + args.aux * torch.stack(aux).sum() / total
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append((mse.item(), right / total))
        if (step + 1) % 100 == 0:
            recent = history[-100:]
            print(
                f"tower {step + 1}/{args.steps} mse {np.mean([h[0] for h in recent]):.4f} "
                f"head acc {np.mean([h[1] for h in recent]):.3f} "
                f"{time.monotonic() - t0:.0f}s",
                flush=True,
            )
    return {"seconds": round(time.monotonic() - t0, 1), "final_mse": history[-1][0]}


# -- stage 3 (optional): LM-in-the-loop tune of the projector -----------------------------------


def tune(trainer: Trainer, args: argparse.Namespace) -> dict[str, object]:
    opt = torch.optim.AdamW(trainer.projector.parameters(), lr=args.tune_lr, weight_decay=0.0)
    rng = random.Random(f"tune:{args.seed}")
    letters = trainer.prompts.letters
    t0 = time.monotonic()
    for step in range(args.tune_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(args.tune_lr, step, args.tune_steps, 5)
        images, attributes, _ = sample_pictures(trainer, rng, args.tune_batch)
        with torch.no_grad():
            hidden = trainer.tower(pixel_values=pixels(images), output_hidden_states=True)
        feats = trainer.projector(hidden.hidden_states[-1][:, 1:])
        losses = []
        for family in SLOTS:
            rows = [i for i, a in enumerate(attributes) if a[family] is not None]
            if not rows:
                continue
            targets = torch.tensor([letters[attributes[i][family]] for i in rows])  # type: ignore[index]
            logits = trainer.logits(family, feats[rows])
            losses.append(F.cross_entropy(logits, targets, reduction="sum"))
        loss = torch.stack(losses).sum() / len(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 10 == 0:
            print(f"tune {step + 1}/{args.tune_steps} loss {loss.item():.3f} "
                  f"{time.monotonic() - t0:.0f}s", flush=True)  # fmt: skip
    return {"seconds": round(time.monotonic() - t0, 1)}


# -- evaluation, saving -------------------------------------------------------------------------


@torch.no_grad()
def evaluate(trainer: Trainer, n: int) -> dict[str, float]:
    """Greedy accuracy (top letter among A–E) by difficulty and family on held-out pictures."""
    rng = random.Random("heldout")
    right: dict[str, list[bool]] = {}
    letters = trainer.prompts.letters
    vision = trainer.vision
    for family in SLOTS:
        for difficulty in vision.DIFFICULTIES:
            images, answers = [], []
            for _ in range(n):
                scene = vision.draw_scene(family, difficulty, rng, rng.random() >= 0.1)
                images.append(scene.image)
                answers.append(ABSENT if scene.answer_index is None else scene.answer_index)
            logits = trainer.logits(family, trainer.features(images))[:, letters]
            top = logits.argmax(-1).tolist()
            for a, t in zip(answers, top, strict=True):
                right.setdefault(f"d{difficulty}", []).append(t == a)
                right.setdefault(f"{family}_d{difficulty}", []).append(t == a)
    return {k: round(float(np.mean(v)), 3) for k, v in right.items()}


def save_codes(trainer: Trainer, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"codes": trainer.codes.detach().contiguous()}, str(path))


def load_codes(trainer: Trainer, path: Path) -> None:
    from safetensors.torch import load_file

    with torch.no_grad():
        trainer.codes.copy_(load_file(str(path))["codes"])


def train(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    trainer = Trainer(args.gemma_dir, args.seed)
    out = Path(args.out)
    paths = {
        k: Path(v).name for k in ("gemma_dir", "out", "codes_in", "init") if (v := vars(args)[k])
    }
    report: dict[str, object] = {"seed": args.seed, "args": vars(args) | paths}
    if args.codes_in:
        load_codes(trainer, Path(args.codes_in))
    if args.code_steps:
        report["codes"] = train_codes(trainer, args)
        save_codes(trainer, out.with_suffix(".codes.safetensors"))
    if args.eval_n and (args.code_steps or args.codes_in):
        report["codes_check"] = codes_report(trainer, args.eval_n * 4)
        print(json.dumps(report["codes_check"]), flush=True)
    trainer.codes.requires_grad_(False)
    if args.init:
        load(trainer, Path(args.init))
    if args.steps:
        report["tower"] = train_tower(trainer, args)
    if args.tune_steps:
        report["tune"] = tune(trainer, args)
    if args.eval_n and (args.steps or args.tune_steps) and args.mse:
        report["heldout"] = evaluate(trainer, args.eval_n)
    save(trainer, out, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gemma_dir")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--code-steps", type=int, default=150)
    parser.add_argument("--code-batch", type=int, default=16)
    parser.add_argument("--code-lr", type=float, default=0.03)
    parser.add_argument("--code-mix", type=float, default=0.25)
    parser.add_argument("--codes-in", help="start from this code table (skips nothing)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--aux", type=float, default=0.5, help="weight of the per-slot heads")
    parser.add_argument(
        "--blank-share", type=float, default=0.0, help="share of empty pictures (flat or noise)"
    )
    parser.add_argument("--mse", type=float, default=1.0, help="0: pre-train the tower's heads")
    parser.add_argument("--tune-steps", type=int, default=0)
    parser.add_argument("--tune-batch", type=int, default=8)
    parser.add_argument("--tune-lr", type=float, default=1e-4)
    parser.add_argument("--init", help="start the tower + projector from these saved weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-n", type=int, default=16)
    train(parser.parse_args())


if __name__ == "__main__":
    main()
