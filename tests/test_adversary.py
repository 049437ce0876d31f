"""The mouth discriminator of issue 16 (loss.adversarial): shapes, where gradients go, that it learns,
and that a run with it resumes exactly. Tiny models on the CPU."""

from __future__ import annotations

import pytest
import torch

from lipsync.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from lipsync.train.losses import MouthAdversary, mouth_crop
from lipsync.train.trainer import optimizer_step

REGION = (0.15, 0.2, 0.85, 0.65)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread (conftest.one_torch_thread)."""


def test_the_discriminator_scores_patches_of_the_mouth_crop():
    d = PatchDiscriminator(DiscriminatorConfig(channels=8, layers=3))
    mouth = mouth_crop(torch.rand(2, 3, 128, 128), REGION)  # rows 26..83, cols 19..109 of S = 128
    assert mouth.shape == (2, 3, 57, 90)
    assert d(mouth).shape == (2, 1, 7, 11)  # halved three times, rounding down: 57 -> 7, 90 -> 11


def test_the_generator_term_moves_only_the_generated_image():
    torch.manual_seed(0)
    d = PatchDiscriminator(DiscriminatorConfig(channels=8, layers=2))
    adversary = MouthAdversary(d, d, REGION)
    pred = torch.rand(2, 3, 64, 64, requires_grad=True)
    adversary.generator_term(pred).backward()
    assert all(p.grad is None for p in d.parameters())  # the discriminator is not trained by it
    assert all(p.requires_grad for p in d.parameters())  # and is trainable again afterwards
    grad = pred.grad.abs().sum(dim=(0, 1))  # (64, 64)
    x0, y0, x1, y1 = (round(f * 64) for f in REGION)
    assert grad[y0:y1, x0:x1].sum() > 0
    outside = grad.clone()
    outside[y0:y1, x0:x1] = 0
    assert outside.sum() == 0  # only the mouth region is judged


def test_the_discriminator_learns_to_tell_a_sharp_mouth_from_a_blurred_average():
    """Real: crops with a dark mouth bar at random heights; generated: the average of such crops
    (what an L1-trained generator drifts to). 60 steps separate them; the generator term then
    costs the average more than a real crop."""
    torch.manual_seed(0)
    d = PatchDiscriminator(DiscriminatorConfig(channels=8, layers=2))
    adversary = MouthAdversary(d, d, REGION)
    optim = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.999))

    def real_batch(n: int = 8) -> torch.Tensor:
        x = torch.full((n, 3, 64, 64), 0.7)
        for i, row in enumerate(torch.randint(20, 36, (n,)).tolist()):
            x[i, :, row:row + 4, 16:48] = 0.1
        return x

    blurred = real_batch(256).mean(dim=0, keepdim=True).expand(8, -1, -1, -1)
    first = None
    for _ in range(60):
        loss, accuracy = adversary.discriminator_loss(real_batch(), blurred)
        first = float(loss.detach()) if first is None else first
        optimizer_step(optim, loss, d.parameters(), grad_clip=0.0)
    print(f"discriminator loss {first:.3f} -> {float(loss.detach()):.3f}, patch accuracy {float(accuracy):.2f}")
    assert float(loss.detach()) < 0.5 * first and float(accuracy) > 0.9
    with torch.no_grad():
        assert adversary.generator_term(blurred) > adversary.generator_term(real_batch())


def test_a_run_with_the_adversary_checkpoints_it_and_resumes_exactly(prepared_obama, tmp_path):
    """loss.adversarial > 0: the discriminator trains each generator step, its state is in the
    checkpoint, and a stopped run resumed to the end equals a straight one."""
    from test_train import _losses, _run

    from lipsync.train.checkpoint import latest_checkpoint, read_checkpoint

    adv = ["syncnet_steps=2", "loss.adversarial=0.05", "adversarial_after=1"]
    full = _run(prepared_obama, tmp_path / "a", adv + ["generator_steps=4"])
    records = [r for r in full.metrics.records if r.get("stage") == "generator" and "loss" in r and r["stage_step"]]
    assert [("adv" in r, "disc" in r) for r in records] == [(False, True)] + [(True, True)] * 3  # after step 1
    _run(prepared_obama, tmp_path / "d", adv + ["generator_steps=2"])
    resumed = _run(prepared_obama, tmp_path / "d", adv + ["generator_steps=4"], resume=True)
    for mine, theirs in ((full.generator, resumed.generator), (full.discriminator, resumed.discriminator)):
        for name, tensor in mine.state_dict().items():
            assert torch.equal(tensor, theirs.state_dict()[name]), name
    assert _losses(resumed) == _losses(full)
    state, _ = read_checkpoint(latest_checkpoint(tmp_path / "d"))
    assert state["discriminator"] is not None and state["discriminator_optim"]["state"]
    assert state["discriminator_config"] == {"channels": 32, "layers": 3}

    plain = _run(prepared_obama, tmp_path / "p", ["syncnet_steps=2", "generator_steps=2"])
    assert read_checkpoint(latest_checkpoint(tmp_path / "p"))[0]["discriminator"] is None
    assert not hasattr(plain, "discriminator")
