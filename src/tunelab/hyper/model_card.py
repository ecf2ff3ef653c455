"""The weight predictor's model card (README.md beside it): recipe, data, scores, machine."""

from __future__ import annotations

from pathlib import Path


def _mean(rows: list[dict], key: str) -> float:
    return sum(row[key] for row in rows) / len(rows)


def _score_table(rows: list[dict]) -> str:
    lines = ["| subject | base | predicted LoRA | predict s |", "|---|---|---|---|"]
    lines += [f"| {r['subject']} | {r['base']:.3f} | {r['predicted']:.3f} | {r['predict_seconds']:.3f} |" for r in rows]
    lines.append(f"| **mean** | {_mean(rows, 'base'):.3f} | {_mean(rows, 'predicted'):.3f} | {_mean(rows, 'predict_seconds'):.3f} |")
    return "\n".join(lines)


def write_card(folder: Path, facts: dict) -> Path:
    recipe = facts["recipe"]
    flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in recipe.items())
    bases = ("bases learned over the pretraining subjects in stage 1 (random orthonormal at first), then frozen,"
             if recipe.get("basis_lr") else "fixed random orthonormal bases")
    weights = f"min-SNR-{recipe['min_snr_gamma']:g} timestep weights" if recipe.get("min_snr_gamma") else "uniform timestep weights"
    text = f"""# toyworld weight predictor (HyperDreamBooth style)

Predicts a subject's LoRA from one or a few images in one forward pass: `tunelab personalize --hypernet
predictor.safetensors --images DIR --out lora.safetensors`. The LoRA answers to the prompt "a sks <shape>".

- Base model: `{facts['model']}`; the LoRA adapts the denoiser's {recipe['targets']} layers in {bases}
  of rank {recipe['rank']} (a {recipe['rank']}x{recipe['rank']} core per layer is what is predicted).
- Predictor: a small convolutional image encoder (features averaged over the images) and an MLP decoder to the
  cores; {facts['parameters']:,} parameters, {facts['file_bytes'] / 1e6:.1f} MB in fp16 with its bases.
- Data: {len(facts['subjects'])} procedural toyworld subjects (a shape, two reserved colours the base never saw together, a
  two-colour pattern), {recipe['renders']} renders each; the built-in three and the 16 held-out subjects were never trained on.
- Recipe: stage 1, {recipe['core_steps']} steps of all subjects' LoRAs at once (each batch item through its own
  subject's LoRA; prior preservation on the base's class images); stage 2, {recipe['regression_steps']} steps of the
  predictor regressing those cores; stage 3, {recipe['diffusion_steps']} steps of the predictor through the diffusion
  loss of the LoRAs it predicts. Stages 1 and 3 weigh the diffusion loss with {weights}.

To make it again: `tunelab hyper pretrain --world toyworld --model {facts['model']} --out DIR {flags}`

## Scores

Subject fidelity (toyworld's exact metric: 1.0 is a render of the subject) of {recipe['eval_images']} images per
subject made with its prompt, predicted from its 5 training renders, no refinement.

Held-out subjects:

{_score_table(facts['held_out'])}

Subjects it was trained on (first 8):

{_score_table(facts['seen'])}

Made on: {facts['machine']}; training took {facts['train_seconds'] / 60:.1f} minutes, the whole run
(class images and scoring included) {facts['total_seconds'] / 60:.1f} minutes.
"""
    path = folder / "README.md"
    path.write_text(text)
    return path
