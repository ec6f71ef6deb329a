"""Issue 15, "baseline quality": why does the VLA reach only ~50% of MT10 at N=20 when a plain small
CNN trained for ~8 minutes reaches about three quarters (shared/PROTOCOL.md)? One seed per suspect,
each a config override of ``vla_baseline.py:mt10_n20``, evaluated like the protocol (200 episodes).

Suspects: random-crop augmentation (crops of 85-100% move the goal and the objects in the image but
not the hand's proprio coordinates, which the goal-driven tasks need to agree), 16 patch tokens
per 64 px frame (patch 16: a goal dot or a handle is a fraction of one token, embedded by one
matrix), and the number of steps. Version 2 adds the convolutional stem (``model.stem``: two 3x3
stride-2 convolutions before the patch embedding, same 16 tokens per frame), the usual cure for
ViTs that lose to small CNNs on little data. The reference cell is the baseline's own N=20 run
(reused from baseline_data_efficiency). Cells added next (same version: added cells accumulate) try one observation frame instead of two
(``data.history=1``): with two frames and two proprio readings the previous action is readable from
the input, the behaviour-cloning "copycat" shortcut (Wen et al. 2020) that imitates well offline and
drifts closed loop; the plain CNN the protocol quotes sees one frame. Then finer tokens
(patch 8: 64 per frame) and a 3x higher learning rate: on its own training episodes the 2000-step
policy's first action is off by 30-50% of the demo's magnitude on peg-insert-side and push, and its
hand ignores the goal's x position: the policy underfits positions rather than drifting. Last, the
protocol's reference itself, built in the stack (``cnn_bc.py:mt10_n20``: the plain CNN, same data,
steps and evaluation), which reaches 68% at 6000 steps: so the VLA gets the CNN's whole trunk as
its stem (four stride-2 convolutions, 64 px -> 4 x 4 x 128: one token per 16 px cell): 67% at 4000
steps, but ~18.5 min of training; 3000 steps would fit the protocol's ~15-minute budget (64%).
Then the trunk with one history frame: the trunk is a third of the step's time per frame, so one
frame makes the step 1.5x cheaper (190 vs 297 ms) and 4000 steps fit the budget; and the same with
an exponential moving average of the parameters (decay 0.999), evaluated in place of the raw ones.
Then (session 26) the two ways of reading a 1-2 px goal left untried, each on the current preset (the
trunk, one frame, 4000 steps): spatial-softmax keypoints (``model.keypoints``: 32 soft-argmax (x, y)
pairs of a 1x1 convolution of the trunk's 16 x 16 level, one extra token per frame; robomimic's image
BC) and a stride-1 first convolution (``model.stem_strides``: the trunk sees the full 64 px before
downsampling; ~4x the trunk's FLOPs, so the same 4000 steps run past the 15-minute budget: the cell
asks whether resolution is what the goal tasks lack, not whether it fits). Session 27: the stride-1
trunk at 2500 steps (38.7 vs 24.1 GFLOPs per step: 2500 steps cost what the preset's 4000 do, inside
the budget), on three seeds; and the same with 32 keypoints of its full-resolution (64 x 64) first
level, the goal dot before any downsampling. And the textbook cure for a policy that fits its 20 demos
offline (held-out action error still falling) without gaining closed loop: random shifts of up to 4 px
(``data.augment.shift``; DrQ, robomimic's crop randomizer) on the current preset, with no rescaling or
colour jitter (version 1's augmentation had both and hurt). And the plain CNN at the VLA's compute:
``cnn_bc`` is 9.9 GFLOPs per step against the preset's 24.1, so 10000 of its steps cost what the
preset's 4000 do (it rose 48% -> 68% from 2000 to 6000 steps). Session 28: that CNN read two history
frames in float32 (the default data window); with one frame and bf16, as the VLA preset reads them, its
step is 5.2 GFLOPs and ~1.5x the VLA's steps/s, so 10000 steps come near the 15-minute budget: the same
CNN at one frame, and at one frame with a 3x higher peak learning rate (fewer steps to the same fit).
And the CNN's readout given to the VLA: the CNN reads the goal (16/60 goal-task successes at 10000
steps, the VLA preset 3/60) through one matrix over its whole flattened 4 x 4 x 128 map, where every
position has its own weights; the VLA embeds each 16 px cell with one shared matrix plus a position
embedding and must find the goal's cell by attention. ``model.flat_token``: one more token per frame,
the CNN's readout, on the current preset (~0.3 MFLOPs per example more). Session 29: the preset at the
CNN's 3x peak learning rate (1e-3); and the instruction as one token (``model.text_pool``: the mean of its
byte embeddings, the CNN's task embedding) instead of 32 byte tokens, which takes the step from 24.1 to
13.4 GFLOPs, so 6000 steps at 1e-3 cost less than the preset's 4000. And the CNN preset at N=2 with a
quarter of its steps (its 8000 steps at 1e-3 gave 24% at N=2 against the VLA's 43%)."""

from experiments.configs.vla_baseline import BYTE_TOKENS
from wam_jax.ablations.sweep import Cell, Sweep

# The mt10_n20 preset as these cells ran it (session 8): 16 pixel-patch tokens per frame, two history
# frames, 2000 steps, no augmentation. The preset has since taken the winner (the conv trunk, one
# frame, 4000 steps), so every cell pins what it started from: version 3 = version 2's runs
# (identical configs: ``ablations.py`` links them from a version-2 workdir beside it, no retraining).
V2_PRESET = {"model.stem": (), "data.history": 2, "train.steps": 2000, "data.augment.enabled": False}
NO_AUGMENT = {"data.augment.enabled": False}
AUGMENT = {"data.augment.enabled": True}  # random crops + colour jitter (the version-1 preset)
STEM = {"model.stem": (32, 64)}
# Random shifts of up to 4 px each way, the border repeated (DrQ's pad-and-crop), and nothing else: objects
# move but keep their size and colour (version 1's crops also rescaled and its jitter recoloured).
SHIFT4 = {"data.augment.enabled": True, "data.augment.shift": 4, "data.augment.crop_scale": (1.0, 1.0),
          "data.augment.crop_ratio": (1.0, 1.0), "data.augment.brightness": 0.0, "data.augment.contrast": 0.0,
          "data.augment.saturation": 0.0}

# The cnn_bc.py:mt10_n20 preset as its cells up to session 27 ran it (two history frames in float32,
# 2000 steps at 3e-4); the preset has since taken session 28's winner, so every CNN cell pins this.
CNN_V3_PRESET = {"data.history": 2, "train.compute_dtype": "float32", "train.steps": 2000,
                 "train.learning_rate": 3e-4}
# The plain CNN reading frames as the VLA preset does: one observation frame, bf16 compute.
CNN_HISTORY1 = {"data.history": 1, "train.compute_dtype": "bfloat16"}
CNN = "experiments/configs/cnn_bc.py:mt10_n20"


def _cell(name: str, overrides: dict = None, config: str = "experiments/configs/vla_baseline.py:mt10_n20",
          pin: bool = True, n_demos: int = 20) -> Cell:
  # Every VLA cell ran the preset as it was before session 30 (BYTE_TOKENS) or sets those fields itself.
  pinned = {**(BYTE_TOKENS if "vla_baseline.py" in config else {}), **(V2_PRESET if pin else {})}
  overrides = {**pinned, **(overrides or {})}
  return Cell(name=name, config=config, overrides=overrides, method=name, n_demos=n_demos)


SWEEP = Sweep(
    name="baseline_quality",
    version=3,
    description=__doc__,
    seeds=(0,),
    cells=(
        _cell("vla_l1_n20", AUGMENT),  # the reference: the version-1 preset
        _cell("no_augment", NO_AUGMENT),
        _cell("no_augment_stem", {**NO_AUGMENT, **STEM}),
        _cell("stem", {**AUGMENT, **STEM}),
        _cell("patch8", {**AUGMENT, "model.patch_size": 8}),
        _cell("no_augment_patch8", {**NO_AUGMENT, "model.patch_size": 8}),
        _cell("no_augment_history1", {**NO_AUGMENT, "data.history": 1}),
        _cell("no_augment_history1_steps4000", {**NO_AUGMENT, "data.history": 1, "train.steps": 4000}),
        _cell("no_augment_history1_patch8", {**NO_AUGMENT, "data.history": 1, "model.patch_size": 8}),
        _cell("no_augment_history1_lr1e-3", {**NO_AUGMENT, "data.history": 1, "train.learning_rate": 1e-3}),
        _cell("cnn_bc", CNN_V3_PRESET, config=CNN, pin=False),
        _cell("cnn_bc_steps6000", {**CNN_V3_PRESET, "train.steps": 6000}, config=CNN, pin=False),
        _cell("stem4_steps4000", {"model.stem": (32, 64, 128, 128), "train.steps": 4000}),
        _cell("stem4_steps3000", {"model.stem": (32, 64, 128, 128), "train.steps": 3000}),
        _cell("no_augment_steps4000", {**NO_AUGMENT, "train.steps": 4000}),
        _cell("stem4_history1_steps4000", {"model.stem": (32, 64, 128, 128), "data.history": 1, "train.steps": 4000}),
        _cell("stem4_history1_steps4000_ema", {"model.stem": (32, 64, 128, 128), "data.history": 1,
                                               "train.steps": 4000, "train.ema_decay": 0.999}),
        _cell("keypoints32", {"model.keypoints": 32, "model.keypoint_level": 1}, pin=False),
        _cell("stride1_first_conv", {"model.stem_strides": (1, 2, 2, 2)}, pin=False),
        _cell("stride1_steps2500", {"model.stem_strides": (1, 2, 2, 2), "train.steps": 2500}, pin=False),
        _cell("stride1_keypoints32_full_steps2500", {"model.stem_strides": (1, 2, 2, 2), "model.keypoints": 32,
                                                     "model.keypoint_level": 0, "train.steps": 2500}, pin=False),
        _cell("shift4", SHIFT4, pin=False),
        _cell("cnn_bc_steps10000", {**CNN_V3_PRESET, "train.steps": 10000}, config=CNN, pin=False),
        _cell("cnn_bc_history1_steps10000", {**CNN_V3_PRESET, **CNN_HISTORY1, "train.steps": 10000}, config=CNN,
              pin=False),
        _cell("cnn_bc_history1_lr1e-3_steps8000",  # = the cnn_bc.py:mt10_n20 preset since session 28
              {**CNN_V3_PRESET, **CNN_HISTORY1, "train.steps": 8000, "train.learning_rate": 1e-3}, config=CNN,
              pin=False),
        _cell("flat_token", {"model.flat_token": True}, pin=False),
        _cell("lr1e-3", {"train.learning_rate": 1e-3}, pin=False),
        _cell("text_pool_lr1e-3_steps6000", {"model.text_pool": True, "train.learning_rate": 1e-3,
                                             "train.steps": 6000}, pin=False),
        _cell("text_pool_lr1e-3", {"model.text_pool": True, "train.learning_rate": 1e-3}, pin=False),
        _cell("text_pool_lr1e-3_steps6000_n2", {"model.text_pool": True, "train.learning_rate": 1e-3,
                                                "train.steps": 6000},
              config="experiments/configs/vla_baseline.py:mt10_n2", pin=False, n_demos=2),
        # Session 30: the pooled preset at lr 1e-3 scored 38% and 41% at N=2 (seeds 0, 1; the byte-token VLA
        # 40-47%) and 57%, 56% at N=5 (59-61%). Pooled at the old lr 3e-4: is it the learning rate?
        *(_cell(f"text_pool_lr3e-4_n{n}", {"model.text_pool": True, "train.learning_rate": 3e-4},
                config=f"experiments/configs/vla_baseline.py:mt10_n{n}", pin=False, n_demos=n) for n in (2, 5)),
        _cell("cnn_bc_n2_steps2000", {"train.steps": 2000}, config="experiments/configs/cnn_bc.py:mt10_n2",
              pin=False, n_demos=2),
    ),
)
