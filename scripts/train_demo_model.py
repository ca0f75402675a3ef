#!/usr/bin/env python
"""Trains the offline demo model: a small open_clip-architecture CLIP on openclipart image-caption pairs.

Architecture (open_clip CLIP, registered as "crossgap-demo-clip"): ViT image tower on 64x64 images (patch 8,
width 192, 6 layers), causal text tower with the standard CLIP BPE tokenizer (vocab 49408, context 32,
width 128, 4 layers), 128-d shared embedding, both towers separately and randomly initialised (open_clip's
CLIP init). Loss: the standard symmetric CLIP contrastive loss; pairs in a batch with the same caption text
count as positives of each other (soft targets), since openclipart has many images sharing one caption.

Temperature: CLIP learns its logit scale from 1/0.07 and it reaches the cap of 100 early in training, so CLIP
spends nearly all of its training at temperature 0.01, which keeps the two modalities' cones apart (the
modality gap; Liang et al., NeurIPS 2022). On 5.6k pairs and a few hundred steps a learned scale stays low
(16.7 at the end of the previous 602-step recipe, ~12 with a 20x larger scale lr; measured) and the gap
closes; fixed at 100 from the first step, training collapses (every feature the same; measured). So the
scale follows CLIP's course as a schedule: from 1/0.07, raised log-linearly to 100 over the lr warm-up
(100 steps), then held at 100 (``--logit-scale-ramp 0`` restores the learned scale).

fp32 on one CPU thread by default (``--bf16`` for CPUs with AMX; bf16 is 10x slower than fp32 on AVX2-only
CPUs). Seeded (``--seed``): with the same torch version and thread count a rerun gives the same figures;
``--check K`` retrains the first K epochs and compares them with the committed training_log.json.

Data: ``scripts/prepare_openclipart.py`` (run first) writes demo_data/manifest.json and the uint8 image cache.
Only the "train" split is used for training; held-out metrics (image->text R@1, image->image mAP with category
labels, the modality gap) are measured on the main job's image set every epoch, and on the held-out images of
training categories and the held-out categories every --eval-every epochs.

Writes crossgap_qdrant/demo_model/open_clip_config.json ({"model_cfg", "preprocess_cfg"}, the open_clip
hub format) and open_clip_pytorch_model.bin (fp16 state dict), loadable with
``crossgap_qdrant.demo.load_demo_model()`` or ``open_clip.create_model_and_transforms("local-dir:<folder>")``,
plus training_log.json with the metrics (paths relative to the repository).

    python scripts/train_demo_model.py            # = --epochs 20 --eval-every 10 --seed 0 --threads 1
    python scripts/train_demo_model.py --check 2  # reproducibility: first 2 epochs vs the committed log
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
import open_clip
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from crossgap_qdrant.datasets import demo_subset  # noqa: E402
from crossgap_qdrant.demo import DEMO_MODEL_DIR, DEMO_MODEL_NAME, demo_model_config  # noqa: E402
from crossgap_qdrant.metrics import heldout_metrics  # noqa: E402
from crossgap_qdrant.models import register_model_config  # noqa: E402

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


INIT_LOG_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
MAX_LOG_SCALE = math.log(100.0)  # CLIP's cap on the logit scale


def normalize(pixels_u8: torch.Tensor) -> torch.Tensor:
    return (pixels_u8.float() / 255.0 - MEAN) / STD


def eval_pixels(cache_u8: np.ndarray, idx: np.ndarray, size: int) -> torch.Tensor:
    """The whole (letterboxed) image resized to the model's size, as open_clip's preprocess does at inference."""
    x = torch.from_numpy(np.ascontiguousarray(cache_u8[idx])).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 255)
    return normalize(x)


def train_pixels(cache_u8: np.ndarray, idx: np.ndarray, size: int, rng: np.random.Generator) -> torch.Tensor:
    """Random crops covering 80-100% of the side, at random positions, resized to the model's size."""
    full = cache_u8.shape[-1]
    out = []
    for i in idx:
        s = int(rng.integers(int(0.8 * full), full + 1))
        y, x = (int(v) for v in rng.integers(0, full - s + 1, size=2))
        crop = torch.from_numpy(np.ascontiguousarray(cache_u8[i, :, y : y + s, x : x + s])).float()[None]
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return normalize(torch.cat(out).clamp(0, 255))


def caption_variant(row: dict, rng: random.Random) -> str:
    """Caption augmentation: the full caption half the time, else the name with a random subset of keywords."""
    if rng.random() < 0.5:
        return row["caption"]
    kws = [k for k in row["caption"].split(", ")[1:]]
    rng.shuffle(kws)
    kws = kws[: rng.randint(0, len(kws))]
    return ", ".join([row["name"]] + kws)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO / "demo_data"), help="folder written by prepare_openclipart.py")
    ap.add_argument("--cache-size", type=int, default=72)
    ap.add_argument("--out", default=str(DEMO_MODEL_DIR))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    ap.add_argument("--logit-scale-lr", type=float, default=None,
                    help="learning rate of the log logit scale (default: --lr)")
    ap.add_argument("--logit-scale-ramp", type=int, default=100,
                    help="the logit scale follows CLIP's course as a schedule: from 1/0.07, raised log-linearly to "
                    "the cap 100 over this many steps (default 100, the lr warm-up), then held there; 0: learned from "
                    "1/0.07 and capped at 100, as in CLIP (on this data it stays below 20 and the gap closes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=10, help="held-out evaluation every N epochs")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast (fast only on CPUs with AMX or AVX512-BF16; measured 10x slower than fp32 "
                    "on an AVX2-only CPU; default: fp32)")
    ap.add_argument("--check", type=int, default=0, metavar="K",
                    help="reproducibility check: train only the first K epochs of the same schedule, compare each "
                    "epoch's loss and demo-set figures with the training_log.json in --out, save nothing")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np_rng = np.random.default_rng(args.seed)
    py_rng = random.Random(args.seed)

    model_cfg = demo_model_config()
    register_model_config(DEMO_MODEL_NAME, model_cfg)
    model = open_clip.create_model(DEMO_MODEL_NAME, output_dict=True)
    tokenizer = open_clip.get_tokenizer(DEMO_MODEL_NAME)
    size = model_cfg["vision_cfg"]["image_size"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {DEMO_MODEL_NAME}: {n_params / 1e6:.2f} M parameters", flush=True)

    data = Path(args.data)
    rows = json.loads((data / "manifest.json").read_text())
    cache = np.load(data / f"images_{args.cache_size}.npy", mmap_mode="r")
    cache = np.array(cache)  # into memory
    assert len(cache) == len(rows), "image cache does not match the manifest: rerun prepare_openclipart.py"
    train_idx = np.array([i for i, r in enumerate(rows) if r["split"] == "train"])
    # Sampling weights 1/sqrt(subcategory size): the 1.4k near-identical stars and 1.9k icons do not swamp it.
    sub_counts: dict[str, int] = {}
    for i in train_idx:
        sub_counts[rows[i]["subcategory"]] = sub_counts.get(rows[i]["subcategory"], 0) + 1
    w = np.array([1.0 / math.sqrt(sub_counts[rows[i]["subcategory"]]) for i in train_idx])
    w /= w.sum()
    steps_per_epoch = len(train_idx) // args.batch_size
    total = steps_per_epoch * args.epochs
    print(f"train: {len(train_idx)} images, {steps_per_epoch} steps/epoch x {args.epochs} epochs = {total} steps, "
          f"batch {args.batch_size}", flush=True)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in n and "logit_scale" not in n else no_decay).append(p)
    no_decay = [p for p in no_decay if p is not model.logit_scale]
    scale_lr = args.lr if args.logit_scale_lr is None else args.logit_scale_lr
    if args.logit_scale_ramp > 0:
        model.logit_scale.requires_grad_(False)  # scheduled by log_scale_at below
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay, "lr_mult": 1.0},
         {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
         {"params": [model.logit_scale], "weight_decay": 0.0, "lr_mult": scale_lr / args.lr}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
    )

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, total - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * t))

    def log_scale_at(step):
        t = min(1.0, step / args.logit_scale_ramp)
        return INIT_LOG_SCALE + t * (MAX_LOG_SCALE - INIT_LOG_SCALE)

    # Paths relative to the repository (the log is committed): no absolute paths of the training machine.
    logged_args = {k: (_portable(v) if k in ("data", "out") else v) for k, v in vars(args).items()}
    log = {"args": logged_args, "params": n_params, "torch": torch.__version__, "epochs": []}
    t0 = time.time()
    step = 0
    for epoch in range(args.check or args.epochs):
        model.train()
        order = np_rng.choice(train_idx, size=steps_per_epoch * args.batch_size, replace=True, p=w)
        ep_loss = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            pixels = train_pixels(cache, idx, size, np_rng)
            texts = [caption_variant(rows[i], py_rng) for i in idx]
            ids = tokenizer(texts)
            same = torch.tensor([[a == c for c in texts] for a in texts], dtype=torch.float32)
            target = same / same.sum(1, keepdim=True)
            for g in opt.param_groups:
                g["lr"] = lr_at(step) * g["lr_mult"]
            if args.logit_scale_ramp > 0:
                with torch.no_grad():
                    model.logit_scale.fill_(log_scale_at(step))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                out = model(pixels, ids)
            img = F.normalize(out["image_features"].float(), dim=-1)
            txt = F.normalize(out["text_features"].float(), dim=-1)
            logits = out["logit_scale"].float() * img @ txt.T
            loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOG_SCALE)
            ep_loss += loss.item()
            step += 1
            if step % 20 == 0:
                print(f"epoch {epoch + 1} step {step}/{total} loss {loss.item():.3f} "
                      f"T^-1 {model.logit_scale.exp().item():.1f} lr {lr_at(step):.2e} {time.time() - t0:.0f}s",
                      flush=True)
        entry = {"epoch": epoch + 1, "loss": ep_loss / steps_per_epoch, "elapsed_s": round(time.time() - t0, 1)}
        entry["logit_scale"] = round(model.logit_scale.exp().item(), 2)
        model.eval()
        with torch.no_grad():
            # The demo job's own set (cheap): geometry and retrieval tracked every epoch.
            entry["demo_set"] = evaluate_demo_set(model, tokenizer, rows, cache, size)
            if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
                entry["heldout"] = evaluate(model, tokenizer, rows, cache, size)
        print(json.dumps(entry), flush=True)
        log["epochs"].append(entry)
    log["train_wall_s"] = round(time.time() - t0, 1)

    out_dir = Path(args.out)
    if args.check:
        return compare_with_log(log, out_dir / "training_log.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(state, out_dir / "open_clip_pytorch_model.bin")
    cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist(),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    (out_dir / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    total_mb = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()) / 1e6
    print(f"saved {out_dir} ({total_mb:.1f} MB); training wall time {log['train_wall_s']:.0f} s", flush=True)
    return 0


#: Largest difference accepted by --check (the figures are rounded to 4 digits in the log).
CHECK_TOLERANCE = 0.01


def compare_with_log(log: dict, reference_path: Path) -> int:
    """Prints this run's per-epoch figures beside the committed log's; 1 if any differs by more than the tolerance."""
    ref = json.loads(reference_path.read_text())
    for key in sorted(set(ref["args"]) - {"check", "out", "data", "threads"}):
        if ref["args"].get(key) != log["args"].get(key):
            print(f"note: --{key.replace('_', '-')} differs from the reference: "
                  f"{log['args'].get(key)} vs {ref['args'][key]}", flush=True)
    worst = 0.0
    for got, want in zip(log["epochs"], ref["epochs"]):
        pairs = {"loss": (got["loss"], want["loss"])}
        for k in ("i2t_r1", "i2i_map"):
            pairs[k] = (got["demo_set"][k], want["demo_set"][k])
        for k in ("mean_distance", "cos_image_image", "cos_text_text"):
            pairs[k] = (got["demo_set"]["gap"][k], want["demo_set"]["gap"][k])
        worst = max([worst] + [abs(a - b) for a, b in pairs.values()])
        print(f"epoch {got['epoch']}: " + ", ".join(f"{k} {a:.4f} (ref {b:.4f})" for k, (a, b) in pairs.items()),
              flush=True)
    print(f"largest difference to the reference: {worst:.4g} (tolerance {CHECK_TOLERANCE})", flush=True)
    return int(worst > CHECK_TOLERANCE)


def _portable(path: str) -> str:
    """A path relative to the repository where it lies inside it, else its last component only."""
    p = Path(path).resolve()
    try:
        return p.relative_to(REPO).as_posix()
    except ValueError:
        return p.name


def _encode(model, tokenizer, cache, idx, captions, size) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit image and caption features of the rows ``idx`` ([N, E] each)."""
    img = torch.cat([F.normalize(model.encode_image(eval_pixels(cache, idx[s : s + 256], size)).float(), dim=-1)
                     for s in range(0, len(idx), 256)])
    txt = torch.cat([F.normalize(model.encode_text(tokenizer(captions[s : s + 256])).float(), dim=-1)
                     for s in range(0, len(captions), 256)])
    return img, txt


def evaluate_demo_set(model, tokenizer, rows, cache, size) -> dict:
    """The main job's image set (crossgap_qdrant.datasets.demo_subset): R@1, category mAP and the gap, from the
    image cache (the job itself reads the PNGs, so its figures differ slightly)."""
    where = {r["rel"]: i for i, r in enumerate(rows)}
    idx = np.array([where[r["rel"]] for r in demo_subset(rows)])
    caps = [rows[i]["caption"] for i in idx]
    img, txt = _encode(model, tokenizer, cache, idx, caps, size)
    return heldout_metrics(img, txt, caps, [rows[i]["category"] for i in idx])


def evaluate(model, tokenizer, rows, cache, size) -> dict:
    out = {}
    for split in ("heldout_image", "heldout_category"):
        idx = np.array([i for i, r in enumerate(rows) if r["split"] == split])
        caps = [rows[i]["caption"] for i in idx]
        img, txt = _encode(model, tokenizer, cache, idx, caps, size)
        out[split] = heldout_metrics(img, txt, caps, [rows[i]["category"] for i in idx],
                                     [rows[i]["subcategory"] for i in idx])
    return out


if __name__ == "__main__":
    sys.exit(main())
