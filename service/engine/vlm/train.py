"""The tiny VLM's first recipe: the vision tower + projector through the frozen Gemma 3 270M.

    python train.py GEMMA_DIR OUT.safetensors [--pre-steps N] [--steps N] [--seed S] ...

Superseded by train_codes.py (the committed weights' recipe), which imports this module's
pictures, prompts and weight files; this end-to-end recipe stays as the measured baseline
(docs/engine.md) and for LM-in-the-loop experiments.

Only the ~2.5 M vision parameters learn; the language model is frozen and stays bit-identical to
the text engine's. Two stages (docs/engine.md):

1. the tower alone, one 5-way linear head per question family on its 16 patch features;
2. the LM's own cross-entropy (full vocabulary) on the answer letter after "Answer:", every
   picture asked every question it defines, gradients through the frozen LM into the projector
   and (scaled down) the tower — the 16 image tokens become an image-dependent prompt that makes
   the unchanged LM answer. The question text comes before the image in the template, so its KV
   cache is computed once per family and each example only runs the image tokens and the answer
   cue through the LM.

Pictures come from `service/datasets/vision.py` (loaded by path: no project imports here) with
training seed streams that never produce the evaluation seeds' pictures. Seeded: the same
arguments and thread count give the same weights.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from model import (
    ANSWER_PREFIX,
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_TOKEN,
    IMAGE_TOKEN_ID,
    IMAGE_TOKENS,
    build_modules,
    image_features,
)

_VISION_PY = Path(__file__).resolve().parents[2] / "datasets" / "vision.py"
LETTERS = ("A", "B", "C", "D", "E")


def load_vision():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("calib_vision", _VISION_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["calib_vision"] = module
    spec.loader.exec_module(module)
    return module


def pixels(images: list) -> torch.Tensor:  # type: ignore[type-arg]
    """CLIP normalisation of 64×64 RGB pictures (what the served image processor does)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    arr = (arr - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class Prompts:
    """Token ids of each family's prompt, split around the image placeholder."""

    def __init__(self, tokenizer, vision) -> None:  # type: ignore[no-untyped-def]
        self.prefix: dict[str, list[int]] = {}
        self.suffix: dict[str, list[int]] = {}
        for family in vision.FAMILIES:
            text = (
                f"{tokenizer.bos_token}{vision.question_text(family)}\n"
                f"{IMAGE_TOKEN * IMAGE_TOKENS}{ANSWER_PREFIX}"
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            start = ids.index(IMAGE_TOKEN_ID)
            assert ids[start : start + IMAGE_TOKENS] == [IMAGE_TOKEN_ID] * IMAGE_TOKENS
            self.prefix[family] = ids[:start]
            self.suffix[family] = ids[start + IMAGE_TOKENS :]
        encode = tokenizer.convert_tokens_to_ids
        self.letters = [encode(f"▁{x}") for x in LETTERS]
        self.eos = tokenizer.eos_token_id


class Trainer:
    """The frozen LM and the vision modules; the LM's answer logits for given image tokens."""

    #: Run the LM under bf16 autocast (as the engine serves it; ~3x faster than fp32 on
    #: AVX512-BF16 CPUs). This recipe's committed runs used fp32.
    bf16 = False

    def __init__(self, gemma_dir: str, seed: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        self.vision = load_vision()
        self.tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
        self.lm = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32)
        self.lm.eval()
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.tower, self.projector = build_modules(self.lm.config)
        self.prompts = Prompts(self.tokenizer, self.vision)
        self.embed = self.lm.get_input_embeddings()
        self._prefix_cache: dict[str, object] = {}

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.tower.parameters(), *self.projector.parameters()]

    def prefix_cache(self, family: str, batch: int):  # type: ignore[no-untyped-def]
        key = f"{family}:{batch}"
        if key not in self._prefix_cache:
            ids = torch.tensor([self.prompts.prefix[family]] * batch)
            with torch.no_grad():
                out = self.lm(input_ids=ids, use_cache=True)
            self._prefix_cache[key] = out.past_key_values
        return copy.deepcopy(self._prefix_cache[key])

    def features(self, images: list) -> torch.Tensor:  # type: ignore[type-arg]
        """The image tokens the tower + projector make of `images`."""
        return image_features(self.tower, self.projector, pixels(images))

    def logits(self, family: str, feats: torch.Tensor) -> torch.Tensor:
        """(batch, vocab) logits at the answer position for image tokens `feats`."""
        batch = feats.shape[0]
        suffix = torch.tensor([self.prompts.suffix[family]] * batch)
        embeds = torch.cat([feats, self.embed(suffix)], dim=1)
        cache = self.prefix_cache(family, batch)
        start = len(self.prompts.prefix[family])
        positions = torch.arange(start, start + embeds.shape[1])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.lm(
                inputs_embeds=embeds,
                past_key_values=cache,
                cache_position=positions,
                position_ids=positions.unsqueeze(0).expand(batch, -1),
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1].float()

    def sample(
        self, rng: random.Random, family: str, batch: int, difficulty: int | None = None
    ) -> tuple[list, list[int]]:  # type: ignore[type-arg]
        images, answers = [], []
        for _ in range(batch):
            level = rng.choice(self.vision.DIFFICULTIES) if difficulty is None else difficulty
            answerable = rng.random() >= 0.1
            scene = self.vision.draw_scene(family, level, rng, answerable)
            images.append(scene.image)
            answers.append(4 if scene.answer_index is None else scene.answer_index)
        return images, answers


#: How often each difficulty is drawn in training: more easy pictures, so features form early.
TRAIN_DIFFICULTY_WEIGHTS = (0.35, 0.3, 0.2, 0.15)


def sample_multi(
    trainer: Trainer, rng: random.Random, batch: int
) -> tuple[list, list[dict[str, int | None]]]:  # type: ignore[type-arg]
    """Pictures from every family's generator, each with all the answers it defines."""
    vision = trainer.vision
    images, attributes = [], []
    for _ in range(batch):
        family = rng.choice(vision.FAMILIES)
        level = rng.choices(vision.DIFFICULTIES, TRAIN_DIFFICULTY_WEIGHTS)[0]
        scene = vision.draw_scene(family, level, rng, rng.random() >= 0.1)
        images.append(scene.image)
        attributes.append(scene.attributes)
    return images, attributes


def pretrain_tower(trainer: Trainer, args: argparse.Namespace) -> float:
    """Stage 1, no LM: the tower learns the pictures with one 5-way head per question family.

    Cheap (the tower is ~2 M parameters), and it gives stage 2 features where colour, shape,
    count and position are already separable, so the expensive LM-in-the-loop stage only has to
    learn how to present them to the language model.
    """
    families = trainer.vision.FAMILIES
    width = trainer.tower.config.hidden_size
    heads = torch.nn.ModuleDict(
        {
            f: torch.nn.Sequential(
                torch.nn.LayerNorm(width * IMAGE_TOKENS), torch.nn.Linear(width * IMAGE_TOKENS, 5)
            )
            for f in families
        }
    )
    params = [*trainer.tower.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=args.pre_lr, weight_decay=0.01)
    rng = random.Random(f"pretrain:{args.seed}")
    t0 = time.monotonic()
    recent: list[float] = []
    for step in range(args.pre_steps):
        warm = min(1.0, (step + 1) / 50)
        lr = args.pre_lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.pre_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        images, attributes = sample_multi(trainer, rng, args.pre_batch)
        out = trainer.tower(pixel_values=pixels(images), output_hidden_states=True)
        feats = out.hidden_states[-1][:, 1:].flatten(1)
        losses, right, total = [], 0, 0
        for family in families:
            rows = [i for i, a in enumerate(attributes) if a[family] is not None]
            if not rows:
                continue
            logits = heads[family](feats[rows])
            targets = torch.tensor([attributes[i][family] for i in rows])
            losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            right += int((logits.argmax(-1) == targets).sum())
            total += len(rows)
        loss = torch.stack(losses).sum() / total
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent = [*recent[-39:], right / total]
        if (step + 1) % 50 == 0:
            print(
                f"pretrain {step + 1}/{args.pre_steps} loss {loss.item():.3f} "
                f"acc {np.mean(recent):.2f} {time.monotonic() - t0:.0f}s",
                flush=True,
            )
    return time.monotonic() - t0


def train(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    trainer = Trainer(args.gemma_dir, args.seed)
    if args.init:
        load(trainer, Path(args.init))
    pre_seconds = pretrain_tower(trainer, args) if args.pre_steps else 0.0
    params = trainer.parameters()
    opt = torch.optim.AdamW(
        [
            {"params": list(trainer.projector.parameters()), "scale": 1.0},
            {"params": list(trainer.tower.parameters()), "scale": args.tower_lr_scale},
        ],
        lr=args.lr,
        weight_decay=0.01,
    )
    rng = random.Random(f"train:{args.seed}:{args.init or ''}")
    families = trainer.vision.FAMILIES
    letter_ids = trainer.prompts.letters
    t0 = time.monotonic()
    history = []
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        images, attributes = sample_multi(trainer, rng, args.batch)
        losses, right, total = [], 0, 0
        for family in families:  # the same picture under every question it answers
            rows, answer_ids = [], []
            for i, a in enumerate(attributes):
                answer = a[family]
                if answer is not None:
                    rows.append(i)
                    answer_ids.append(letter_ids[answer])
            if not rows:
                continue
            targets = torch.tensor(answer_ids)
            logits = trainer.logits(family, trainer.features([images[i] for i in rows]))
            losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            right += int((logits.argmax(-1) == targets).sum())
            total += len(rows)
        loss = torch.stack(losses).sum() / total
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append((loss.item(), right / total))
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            save(trainer, Path(args.out), {"steps_done": step + 1, "partial": True}, quiet=True)
        if (step + 1) % 10 == 0:
            recent = history[-10:]
            print(
                f"step {step + 1}/{args.steps} loss {np.mean([h[0] for h in recent]):.3f} "
                f"acc {np.mean([h[1] for h in recent]):.2f} lr {lr:.2e} "
                f"{time.monotonic() - t0:.0f}s",
                flush=True,
            )
    seconds = time.monotonic() - t0
    report = {
        "pre_steps": args.pre_steps,
        "pre_seconds": round(pre_seconds, 1),
        "steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "init": Path(args.init).name if args.init else None,
        "lr": args.lr,
        "seconds": round(seconds, 1),
    }
    report["heldout"] = evaluate(trainer, args.eval_n)
    save(trainer, Path(args.out), report)
    return report


@torch.no_grad()
def evaluate(trainer: Trainer, n: int) -> dict[str, float]:
    """Greedy accuracy (top token = the right letter) by difficulty on held-out pictures."""
    rng = random.Random("heldout")
    right: dict[str, list[bool]] = {}
    letters = trainer.prompts.letters
    for family in trainer.vision.FAMILIES:
        for difficulty in trainer.vision.DIFFICULTIES:
            images, answers = trainer.sample(rng, family, n, difficulty)
            logits = trainer.logits(family, trainer.features(images))
            top = logits.argmax(-1).tolist()
            for a, t in zip(answers, top, strict=True):
                right.setdefault(f"d{difficulty}", []).append(t == letters[a])
                right.setdefault(family, []).append(t == letters[a])
    return {k: round(float(np.mean(v)), 3) for k, v in right.items()}


def load(trainer: Trainer, path: Path) -> None:
    """Continue from saved weights (a second training stage of the recipe)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    for prefix, module in (
        ("vision_tower.", trainer.tower),
        ("multi_modal_projector.", trainer.projector),
    ):
        own = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(own)


def save(trainer: Trainer, out: Path, report: dict[str, object], quiet: bool = False) -> None:
    from safetensors.torch import save_file

    state = {f"vision_tower.{k}": v for k, v in trainer.tower.state_dict().items()}
    state |= {f"multi_modal_projector.{k}": v for k, v in trainer.projector.state_dict().items()}
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"report": json.dumps(report)})
    if not quiet:
        print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("gemma_dir")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pre-steps", type=int, default=1500)
    parser.add_argument("--pre-batch", type=int, default=64)
    parser.add_argument("--pre-lr", type=float, default=1e-3)
    parser.add_argument("--tower-lr-scale", type=float, default=0.3)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--init", help="start from these saved weights (next recipe stage)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-n", type=int, default=16)
    train(parser.parse_args())


if __name__ == "__main__":
    main()
