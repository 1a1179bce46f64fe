"""Changing the look of a running live job without a restart (`streamer run` stdin controls)."""

import asyncio

import pytest

from streamer.config import load_config
from streamer.job import Controls, Job, build_processing
from streamer.live.core import Settings
from streamer.pipeline.runner import Pipeline
from tests.harness import ListSink, ListSource, make_frames
from tests.media import make_clip


@pytest.fixture
def job(recipe_weights):
    config = load_config(
        None,
        {
            "model": {
                "variant": "lite",
                "weights": str(recipe_weights("lite")),
                "size": "64x64",
                "device": "cpu",
            },
            "composite": {"mode": "color"},
        },
    )
    engine, smoother, compositor = build_processing(config)
    return Job(None, [], engine, smoother, compositor, live=True, batch_size=1, propagation=Settings())


def test_commands_replace_params_and_reject_bad_values(job):
    controls = Controls(job)
    assert controls.apply("mode blur") == "composite.mode = blur"
    assert controls.apply("blur 40") == "composite.blur_radius = 40"
    assert controls.apply("color #0000ff") == "composite.color = (0, 0, 255)"
    assert controls.apply("smoothing off") == "smoothing.enabled = False"
    assert controls.apply("strength 0.8") == "smoothing.strength = 0.8"
    assert controls.apply("keyframes 3") == "propagation.keyframe_every = 3"
    assert controls.apply("propagation off") == "propagation.enabled = False"
    assert job.propagation.params.keyframe_every == 3 and not job.propagation.params.enabled
    assert controls.apply("keyframes 0").startswith("not changed: propagation.keyframe_every")
    assert job.compositor.params.mode == "blur" and job.compositor.params.blur_radius == 40
    assert not job.smoother.params.enabled
    reply = controls.apply("mode sparkle")
    assert reply.startswith("not changed: composite.mode: bad value 'sparkle': expected 'matte'")
    assert job.compositor.params.mode == "blur"
    assert controls.apply("jump 3").startswith("unknown command")
    assert "mode VALUE" in controls.apply("help")


def test_a_background_that_cannot_be_read_is_refused_and_the_job_goes_on(job, tmp_path):
    """Checked when typed, not at the next frame: that frame would end the live job."""
    broken = tmp_path / "beach.png"
    broken.write_text("{}")
    video = make_clip(tmp_path / "waves.mp4", frames=3, audio=False)
    reply_to = Controls(job).apply
    assert reply_to(f"background {broken}") == f"composite.background = {broken}"
    reply = reply_to("mode image")
    assert reply.startswith(f"not changed: composite.background: cannot read background image: {broken}")
    assert job.compositor.params.mode == "color"
    assert reply_to(f"background {video}") == f"composite.background = {video}"
    assert reply_to("mode video") == "composite.mode = video"
    assert reply_to("mode image").startswith("not changed: composite.background: cannot read")
    assert job.compositor.params.mode == "video"


async def test_change_applies_to_the_running_pipeline(job):
    # Enough camera for a very slow machine (20 s); the test stops it once the change has shown.
    frames = make_frames(600, size=(48, 64))
    sink = ListSink()
    pipe = Pipeline(ListSource(frames, live=True, interval=0.03), job.stages(), [sink], live=True)
    task = asyncio.create_task(pipe.run())
    while not sink.frames and not task.done():
        await asyncio.sleep(0.02)
    Controls(job).apply("mode matte")
    while not (sink.frames and sink.frames[-1].output.shape[-1] == 1) and not task.done():
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # a few more frames: the change must stay
    pipe.stop()
    await asyncio.wait_for(task, 60)
    channels = [f.output.shape[-1] for f in sink.frames]
    assert channels[0] == 3 and channels[-1] == 1
    # One switch, no restart: once the matte shows, it stays.
    first_matte = channels.index(1)
    assert set(channels[first_matte:]) == {1}
