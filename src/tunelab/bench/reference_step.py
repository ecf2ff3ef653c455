"""Reference training-step benchmark: a plain diffusers + PEFT loop, the way the
public example scripts train (noise -> denoiser -> MSE -> backward -> AdamW).

It measures seconds per step, images per second, peak accelerator memory and
achieved TFLOP/s for full fine-tuning (DreamBooth-style) and LoRA on real-size
SD1.5 (512 px), SDXL (1024 px) and Flux.1 (512 and 1024 px) architectures with random weights (speed and memory do not
depend on weight values). It is the baseline a project trainer is compared
against, side by side, in one run on one machine.

Copied into tunelab (tunelab/bench/reference_step.py) from this workplace's shared
bench/reference_step.py (sha256 f13580a0...), so that `tunelab bench speed` runs it in the same
process as tunelab's own step. Changes, all marked "tunelab:": run_case takes the batch size,
latent side and LoRA rank as optional overrides (defaults: the case's own), and reports the
seconds its two warm-up steps took. The timed loop, the FLOP count and the fields are unchanged.

usage: python reference_step.py [--tiny] [--only NAME ...] [--steps N] [--out FILE] [--no-cudnn-sdp]
(on torch 2.11/cu130 the cuDNN attention backward failed on the Flux shapes: pass --no-cudnn-sdp there)
"""
import argparse, json, sys, time, traceback

import torch
from torch.utils.flop_counter import FlopCounterMode


def sd15_unet(tiny):
    from diffusers import UNet2DConditionModel
    if tiny:
        return UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16), 8, 32, None
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8), 64, 768, None


def sdxl_unet(tiny):
    from diffusers import UNet2DConditionModel
    kw = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              addition_embed_type="text_time", use_linear_projection=True, layers_per_block=2)
    if tiny:
        m = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64, 64), transformer_layers_per_block=[1, 1, 2],
                                 attention_head_dim=[2, 4, 4], cross_attention_dim=64, addition_time_embed_dim=8,
                                 projection_class_embeddings_input_dim=64 + 6 * 8, norm_num_groups=16, **kw)
        return m, 8, 64, 64
    m = UNet2DConditionModel(sample_size=128, block_out_channels=(320, 640, 1280), transformer_layers_per_block=[1, 2, 10],
                             attention_head_dim=[5, 10, 20], cross_attention_dim=2048, addition_time_embed_dim=256,
                             projection_class_embeddings_input_dim=2816, **kw)
    return m, 128, 2048, 1280


def flux_transformer(tiny):
    from diffusers import FluxTransformer2DModel
    if tiny:
        return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                      num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                      guidance_embeds=True, axes_dims_rope=(4, 6, 6)), 8, 32, 32
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                                  num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                  guidance_embeds=True, axes_dims_rope=(16, 56, 56)), 64, 4096, 768


def flux_transformer_1024(tiny):
    model, lat, ctx, pooled = flux_transformer(tiny)
    return model, (16 if tiny else 128), ctx, pooled  # 128x128 latent = 1024 px = 4096 packed image tokens


def unet_batch(model, lat, ctx, pooled, bs, dev, dtype):
    x = torch.randn(bs, 4, lat, lat, device=dev, dtype=dtype)
    kw = dict(encoder_hidden_states=torch.randn(bs, 77, ctx, device=dev, dtype=dtype))
    if pooled:
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(bs, pooled, device=dev, dtype=dtype),
                                   "time_ids": torch.randn(bs, 6, device=dev, dtype=dtype)}
    t = torch.randint(0, 1000, (bs,), device=dev)
    return lambda: model(x, t, **kw).sample, x


def flux_batch(model, lat, ctx, pooled, bs, dev, dtype):
    h = lat // 2  # 2x2 packing of the latent
    x = torch.randn(bs, h * h, model.config.in_channels, device=dev, dtype=dtype)
    txt = 512 if ctx == 4096 else 16
    img_ids = torch.zeros(h * h, 3, device=dev)
    txt_ids = torch.zeros(txt, 3, device=dev)
    kw = dict(encoder_hidden_states=torch.randn(bs, txt, ctx, device=dev, dtype=dtype),
              pooled_projections=torch.randn(bs, pooled, device=dev, dtype=dtype),
              timestep=torch.rand(bs, device=dev, dtype=dtype), img_ids=img_ids, txt_ids=txt_ids,
              guidance=torch.full((bs,), 3.5, device=dev, dtype=dtype))
    return lambda: model(hidden_states=x, **kw).sample, x


CASES = {
    # name: (builder, batch fn, mode, batch size, weight dtype)
    "sd15-full-bs1": (sd15_unet, unet_batch, "full", 1, torch.float32),
    "sd15-full-bs4": (sd15_unet, unet_batch, "full", 4, torch.float32),
    "sd15-lora32-bs4": (sd15_unet, unet_batch, "lora", 4, torch.bfloat16),
    "sdxl-full-bs1": (sdxl_unet, unet_batch, "full", 1, torch.float32),
    "sdxl-lora32-bs1": (sdxl_unet, unet_batch, "lora", 1, torch.bfloat16),
    "sdxl-lora32-bs4": (sdxl_unet, unet_batch, "lora", 4, torch.bfloat16),
    "flux-lora16-bs1": (flux_transformer, flux_batch, "lora", 1, torch.bfloat16),  # 512 px: 1024 image tokens
    "flux1024-lora16-bs1": (flux_transformer_1024, flux_batch, "lora", 1, torch.bfloat16),
}


def run_case(name, tiny, steps, dev, batch_size=None, latent=None, rank=None):
    build, batch, mode, bs, wdtype = CASES[name]
    bs = batch_size or bs  # tunelab: optional overrides of the case's batch, latent side and rank
    torch.manual_seed(0)
    torch.set_default_dtype(wdtype)  # build in place, in the weight dtype: a 12B model built in fp32 on the host is slow
    try:
        with torch.device(dev):
            model, lat, ctx, pooled = build(tiny)
        lat = latent or lat  # tunelab
    finally:
        torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    if mode == "lora":
        from peft import LoraConfig
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        rank = rank or (16 if "flux" in name else 32)  # tunelab: `rank or`
        model.requires_grad_(False)
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # trainable LoRA weights in fp32, as the example scripts do
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    fwd, target = batch(model, lat, ctx, pooled, bs, dev, wdtype)
    use_amp = dev == "cuda"

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=use_amp):
            out = fwd()
        loss = torch.nn.functional.mse_loss(out.float(), target.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    warm = time.perf_counter()  # tunelab: warm-up seconds
    for _ in range(2):
        step()
    sync()
    warmup_s = time.perf_counter() - warm  # tunelab
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=use_amp):
            out = fwd()
        torch.nn.functional.mse_loss(out.float(), target.float()).backward()
    opt.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
    return dict(case=name, params_m=round(n_params / 1e6, 1), trainable_m=round(n_train / 1e6, 2), batch=bs,
                s_per_step=round(dt, 4), images_per_s=round(bs / dt, 2), peak_gib=peak and round(peak, 2),
                tflop_per_step=round(flops / 1e12, 3), achieved_tflops=round(flops / dt / 1e12, 1),
                warmup_s=round(warmup_s, 2))  # tunelab: warmup_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny configs, for a CPU smoke run")
    ap.add_argument("--only", nargs="*", default=list(CASES))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out")
    ap.add_argument("--no-cudnn-sdp", action="store_true",
                    help="turn off the cuDNN attention backend (its backward failed on the Flux shape with torch 2.11/cu130)")
    a = ap.parse_args()
    if a.no_cudnn_sdp:
        torch.backends.cuda.enable_cudnn_sdp(False)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__)), flush=True)
    rows = []
    for name in a.only:
        try:
            r = run_case(name, a.tiny, a.steps, dev)
        except Exception as e:  # one failing case must not hide the others
            traceback.print_exc()
            r = dict(case=name, error=f"{type(e).__name__}: {e}"[:300])
        rows.append(r)
        print(json.dumps(r), flush=True)
        if dev == "cuda":
            torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
