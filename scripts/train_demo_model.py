"""Train the built-in demo model and its four LoRAs on the synthetic scenes, on a CPU, in well under an hour.

What it is for: reproducing the shipped weights in ``lora_engine/demo/weights/``. It starts from the tiny SDXL
architecture of :func:`lora_engine.demo.model.build_demo_pipeline` and trains, in three stages,

1. ``vae``: the AutoencoderKL, to reconstruct scenes (plain and with every effect); then sets its
   ``scaling_factor`` to 1 / std of the latents, as SD's authors did;
2. ``unet``: the UNet, as a noise predictor (diffusers' ``DDPMScheduler``, min-SNR weighting from
   ``diffusers.training_utils``, an EMA of the weights, noise offset for the flat black/white backgrounds)
   on "a {colour} {shape} on a {background} background" captions, sometimes preceded by a trigger word
   with a plain picture, so that a trigger word alone does nothing;
3. ``loras``: one LoRA per ``DEMO_LORAS`` entry, with PEFT's ``add_adapter(LoraConfig)`` on the UNet (and
   on both text encoders where the spec has a text-encoder rank), on pictures with the LoRA's effect and
   captions that start with its trigger word. PEFT-format files are written by diffusers'
   ``save_lora_weights``; kohya ones with SDXL's original block names by ``demo.model.unet_lora_entries``.

The text encoders stay frozen (random but fixed): their outputs still tell the words apart, and the UNet
learns to read them. Everything is seeded; a rerun on the same torch build gives the same weights.

Run: ``python scripts/train_demo_model.py`` (all stages, ~35-45 min on 2 cores), or ``--stages loras``
to redo one stage from the previous one's output. It is not imported by the app or the tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lora_engine.demo.data import draw, prompt_grid, sample_scenes
from lora_engine.demo.model import (
    DEMO_LORAS,
    DEMO_RESOLUTION,
    DEMO_WEIGHTS_DIR,
    UNET_LORA_TARGETS,
    DemoLora,
    build_demo_pipeline,
    render_thumbnails,
    save_demo_lora,
)

logger = logging.getLogger("train_demo_model")

TIME_IDS = torch.tensor(
    [[DEMO_RESOLUTION, DEMO_RESOLUTION, 0, 0, DEMO_RESOLUTION, DEMO_RESOLUTION]], dtype=torch.float32
)
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
TRIGGERS = [spec.trigger_words for spec in DEMO_LORAS]


def pictures(scenes, effect: str | None) -> torch.Tensor:
    """Scenes as a float tensor in [-1, 1], N x 3 x 64 x 64."""
    arr = np.stack([np.asarray(draw(s, effect=effect)) for s in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


class TextCache:
    """SDXL's prompt encoding (penultimate hidden states of both encoders, pooled output of the second).

    With frozen encoders each distinct caption is encoded once; with text-encoder LoRAs, every call.
    The empty caption means "unconditional": zeros, as the pipeline's ``force_zeros_for_empty_prompt``.
    """

    def __init__(self, pipe, cache: bool = True):
        self.pipe, self.cache, self.memo = pipe, cache, {}

    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = self.pipe
        ids = pipe.tokenizer(
            captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        h1 = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        out2 = pipe.text_encoder_2(ids, output_hidden_states=True)
        embeds = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
        pooled = out2.text_embeds
        empty = torch.tensor([c == "" for c in captions])
        embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
        pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return embeds, pooled

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cache:
            return self._encode(captions)
        missing = sorted({c for c in captions if c not in self.memo})
        if missing:
            with torch.no_grad():
                e, p = self._encode(missing)
            self.memo.update({c: (e[i], p[i]) for i, c in enumerate(missing)})
        return torch.stack([self.memo[c][0] for c in captions]), torch.stack([self.memo[c][1] for c in captions])


def train_vae(pipe, args) -> dict:
    from diffusers.optimization import get_scheduler

    scenes = sample_scenes(args.vae_pool, seed=100)
    # Some plain (2 parts in 6 by default), the rest spread over the effects: the decoder must draw what the LoRAs ask
    # for too
    # (inverted colours, 8-pixel blocks), or no LoRA can show them.
    effects = [None] * args.vae_plain_parts + ["outline", "stripes", "inverted", "pixelate"]
    data = torch.cat([pictures(scenes[i :: len(effects)], e) for i, e in enumerate(effects)])
    vae = pipe.vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=100, num_training_steps=args.vae_steps)
    gen = torch.Generator().manual_seed(101)
    t0, log = time.time(), []
    for step in range(args.vae_steps):
        x = data[torch.randint(len(data), (args.vae_batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + args.vae_kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.vae_steps - 1:
            log.append((step, round(loss.item(), 5)))
            logger.info("vae step %d loss %.5f (%.0f s)", step, loss.item(), time.time() - t0)
    vae.eval()
    with torch.no_grad():
        latents = torch.cat(
            [
                vae.encode(data[i : i + 256]).latent_dist.sample(generator=gen)
                for i in range(0, min(1024, len(data)), 256)
            ]
        )
        factor = float(1 / latents.std())
        vae.register_to_config(scaling_factor=factor)
        check = pictures(sample_scenes(64, seed=102), None)
        err = float((vae.decode(vae.encode(check).latent_dist.mode()).sample - check).abs().mean())
    logger.info("vae scaling_factor %.4f, held-out mean abs error %.4f", factor, err)
    return {
        "steps": args.vae_steps,
        "seconds": round(time.time() - t0),
        "scaling_factor": factor,
        "heldout_mean_abs_error": err,
        "loss": log,
    }


def encode_latents(vae, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior's mean and std of every picture; training samples from them each step."""
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(data), 256):
            dist = vae.encode(data[i : i + 256]).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def denoise_loop(pipe, unet, params, args, latents, stds, captions_for, steps: int, seed: int) -> list:
    """The shared training loop: sample latents, noise them, predict the noise, min-SNR weighted MSE."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, compute_snr

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    opt = torch.optim.AdamW(params, lr=args.lr if args.stage == "unet" else args.lora_lr, weight_decay=1e-4)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(200, steps // 10), num_training_steps=steps)
    ema = EMAModel(params, decay=args.ema) if args.stage == "unet" else None
    texts = TextCache(pipe, cache=not args.train_text)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    factor = pipe.vae.config.scaling_factor
    t0, log = time.time(), []
    for step in range(steps):
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        z = (latents[idx] + stds[idx] * torch.randn(latents[idx].shape, generator=gen)) * factor
        captions = ["" if rng.random() < args.uncond else captions_for(int(i), rng) for i in idx]
        embeds, pooled = texts(captions)
        noise = torch.randn(z.shape, generator=gen)
        # Noise offset: lets the model move a whole picture's mean, so flat white/black backgrounds come out.
        noise = noise + args.noise_offset * torch.randn((z.shape[0], z.shape[1], 1, 1), generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch,), generator=gen)
        noisy = noise_scheduler.add_noise(z, noise, t)
        pred = unet(
            noisy, t, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": TIME_IDS.repeat(args.batch, 1)}
        ).sample
        snr = compute_snr(noise_scheduler, t)
        weight = torch.clamp(snr, max=args.snr_gamma) / snr
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(params)
        if step % 100 == 0 or step == steps - 1:
            log.append((step, round(loss.item(), 5)))
            logger.info("%s step %d loss %.5f (%.0f s)", args.stage, step, loss.item(), time.time() - t0)
    if ema is not None:
        ema.copy_to(params)
    return log


def train_unet(pipe, args) -> dict:
    scenes = sample_scenes(args.unet_pool, seed=200)
    t0 = time.time()
    latents, stds = encode_latents(pipe.vae, pictures(scenes, None))
    unet = pipe.unet.train()

    def caption(i: int, rng: random.Random) -> str:
        # A trigger word on a plain picture: with no LoRA (or at scale 0) the word does nothing.
        if rng.random() < args.trigger_share:
            return f"{rng.choice(TRIGGERS)}, {scenes[i].caption}"
        return scenes[i].caption

    args.stage, args.train_text = "unet", False
    log = denoise_loop(pipe, unet, list(unet.parameters()), args, latents, stds, caption, args.unet_steps, 201)
    unet.eval()
    return {"steps": args.unet_steps, "seconds": round(time.time() - t0), "loss": log}


def train_lora(pipe, spec: DemoLora, args) -> dict:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    scenes = sample_scenes(args.lora_pool, seed=300 + spec.seed)
    t0 = time.time()
    latents, stds = encode_latents(pipe.vae, pictures(scenes, spec.effect))
    for model in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        model.requires_grad_(False)
    torch.manual_seed(spec.seed)
    pipe.unet.add_adapter(
        LoraConfig(
            r=spec.rank, lora_alpha=spec.rank, init_lora_weights="gaussian", target_modules=list(UNET_LORA_TARGETS)
        )
    )
    encoders = (pipe.text_encoder, pipe.text_encoder_2) if spec.text_encoder_rank else ()
    for encoder in encoders:
        # PEFT's injector directly: transformers' ``add_adapter`` wants a newer PEFT than diffusers pins.
        inject_adapter_in_model(
            LoraConfig(
                r=spec.text_encoder_rank,
                lora_alpha=spec.text_encoder_rank,
                init_lora_weights="gaussian",
                target_modules=TEXT_TARGETS,
            ),
            encoder,
        )
    params = [p for m in (pipe.unet, *encoders) for p in m.parameters() if p.requires_grad]
    args.stage, args.train_text = "lora", bool(encoders)
    log = denoise_loop(
        pipe,
        pipe.unet,
        params,
        args,
        latents,
        stds,
        lambda i, rng: f"{spec.trigger_words}, {scenes[i].caption}",
        args.lora_steps,
        301 + spec.seed,
    )
    unet_layers = get_peft_model_state_dict(pipe.unet)
    te_layers = [get_peft_model_state_dict(e) for e in encoders]
    return {
        "steps": args.lora_steps,
        "seconds": round(time.time() - t0),
        "loss": log,
        "unet_layers": unet_layers,
        "text_encoder_layers": te_layers,
    }


def evaluate(pipe, out: Path, steps: int) -> dict:
    """Judge the base model on the prompt grid (all colours x shapes x backgrounds, 2 seeds)."""
    from lora_engine.demo.judge import judge

    grid = list(prompt_grid())
    prompts = [s.caption for s in grid for _ in (0, 1)]
    images = pipe(
        prompts,
        num_inference_steps=steps,
        guidance_scale=5.0,
        width=64,
        height=64,
        generator=[torch.Generator().manual_seed(k) for k in range(len(prompts))],
    ).images
    right = 0
    for i, image in enumerate(images):
        s, v = grid[i // 2], judge(image)
        right += (v.colour, v.shape, v.background) == (s.colour, s.shape, s.background)
    sheet = _sheet(images, columns=8)
    sheet.save(out / f"eval-base-{steps}steps.png")
    return {"steps": steps, "right": right, "of": len(images)}


def render_readme_sheet(weights: Path, out: Path) -> None:
    """The README's picture: one row per model (base, then each LoRA), the same six prompts and seeds."""
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image, ImageDraw

    from lora_engine.demo.model import render_sheet

    captions = [
        "a red circle on a white background",
        "a blue square on a black background",
        "a yellow triangle on a white background",
        "a green square on a white background",
        "a red triangle on a black background",
        "a blue circle on a white background",
    ]
    pipe = StableDiffusionXLPipeline.from_pretrained(weights / "model")
    pipe.set_progress_bar_config(disable=True)
    rows = [("base model", render_sheet(pipe, captions, columns=len(captions)))]
    for spec in DEMO_LORAS:
        sheet = render_sheet(pipe, captions, spec=spec, folder=weights / "loras" / spec.repo_id, columns=len(captions))
        rows.append((f'{spec.repo_id}\n"{spec.trigger_words}, ..."', sheet))
    label_w, zoom = 150, 2
    width = label_w + rows[0][1].width * zoom
    canvas = Image.new("RGB", (width, len(rows) * 64 * zoom), (245, 245, 245))
    pen = ImageDraw.Draw(canvas)
    for i, (label, sheet) in enumerate(rows):
        canvas.paste(sheet.resize((sheet.width * zoom, sheet.height * zoom), Image.NEAREST), (label_w, i * 64 * zoom))
        pen.multiline_text((8, i * 64 * zoom + 48), label, fill=(20, 20, 20))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def _sheet(images, columns: int):
    from PIL import Image

    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (64 * columns, 64 * rows), (128, 128, 128))
    for i, image in enumerate(images):
        sheet.paste(image, (64 * (i % columns), 64 * (i // columns)))
    return sheet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_WEIGHTS_DIR, help="where the weights go")
    parser.add_argument("--work", type=Path, default=Path("bench/out/train"), help="checkpoints and eval sheets")
    parser.add_argument(
        "--stages",
        default="vae,unet,loras,readme",
        help="comma-separated: vae, unet, loras, readme (the LoRAs' thumbnails and the README's picture)",
    )
    parser.add_argument("--only", default="", help="train only these LoRA repo ids (comma-separated)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-plain-parts", type=int, default=2, help="plain pictures per 4 with effects")
    parser.add_argument("--resume-vae", action="store_true", help="continue from the last VAE checkpoint")
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--vae-kl", type=float, default=1e-6)
    parser.add_argument("--vae-pool", type=int, default=4000)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--unet-pool", type=int, default=6000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--lora-steps", type=int, default=600)
    parser.add_argument("--lora-pool", type=int, default=2000)
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--uncond", type=float, default=0.1, help="share of captions dropped for guidance")
    parser.add_argument("--trigger-share", type=float, default=0.2)
    parser.add_argument("--noise-offset", type=float, default=0.1)
    parser.add_argument("--snr-gamma", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stages = set(args.stages.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    report_path = args.work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["torch"] = torch.__version__

    from diffusers import StableDiffusionXLPipeline

    pipe = build_demo_pipeline()
    if "vae" in stages:
        if args.resume_vae:
            pipe.vae = type(pipe.vae).from_pretrained(args.work / "vae")
        report["vae"] = train_vae(pipe, args)
        pipe.vae.save_pretrained(args.work / "vae")
    else:
        pipe.vae = type(pipe.vae).from_pretrained(args.work / "vae")
    pipe.set_progress_bar_config(disable=True)
    if "unet" in stages:
        report["unet"] = train_unet(pipe, args)
        pipe.unet.save_pretrained(args.work / "unet")
        report["eval"] = [evaluate(pipe, args.work, n) for n in (8, 20)]
        logger.info("base model judged right: %s", report["eval"])
        model_dir = args.out / "model"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        pipe.save_pretrained(model_dir, safe_serialization=True)
    if "loras" in stages:
        only = set(filter(None, args.only.split(",")))
        for spec in DEMO_LORAS:
            if only and spec.repo_id not in only:
                continue
            # A fresh base for each LoRA: nothing of the previous one's adapters can leak in.
            pipe = StableDiffusionXLPipeline.from_pretrained(args.out / "model")
            pipe.set_progress_bar_config(disable=True)
            result = train_lora(pipe, spec, args)
            save_demo_lora(
                pipe,
                spec,
                result.pop("unet_layers"),
                result.pop("text_encoder_layers"),
                args.out / "loras" / spec.repo_id,
            )
            report.setdefault("loras", {})[spec.repo_id] = result
    if "readme" in stages:
        render_thumbnails(args.out)
        render_readme_sheet(args.out, Path("docs/demo-base-vs-loras.png"))
    report_path.write_text(json.dumps(report, indent=1))
    (args.out / "training.json").write_text(json.dumps({k: v for k, v in report.items()}, indent=1))


if __name__ == "__main__":
    main()
