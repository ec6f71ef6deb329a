"""Fields shared by every family's config. Each preset file starts from here."""

import ml_collections


def data_config() -> ml_collections.ConfigDict:
  """The data section: which datasets, how windows are cut, how frames look."""
  return ml_collections.ConfigDict(dict(
      # Root holding one TFDS-layout dataset directory per registry entry.
      data_dir="",  # "" -> $WAM_DATA_DIR or ./wam_data (embedded MetaWorld sample).
      # ((registry name, sampling weight), ...).
      mixture=(("metaworld_demos", 1.0),),
      # Extra registry files (JSON/YAML/.py, comma-separated) with dataset entries and mixtures,
      # checked before any work (format: wam_jax/data/registry_files.py).
      registry_files="",
      # ((registry name, directory), ...): read these mixture datasets from another directory than
      # their registry entry's (absolute, or under data_dir), e.g. a per-run pseudo-labelled pool.
      dataset_dirs=(),
      train_split="train",
      val_split="val",
      cameras=("primary",),
      image_size=64,
      history=2,            # h: observation frames t-h+1..t.
      future_offset=4,      # k: world-prediction target frames at t+k, t+2k, ...
      num_future=1,         # F.
      action_horizon=8,     # H: chunk a_t..a_{t+H-1}.
      action_dim=7,         # actions are zero-padded to this many dims.
      proprio_dim=8,        # proprio is zero-padded to this many dims.
      max_text_len=48,
      text_tokenizer="",    # "" = UTF-8 bytes; a tokenizer.json (absolute, or under the data root) = the LM BPE (hybrid)
      normalization="quantile",  # "zscore" | "quantile" (q01/q99 -> [-1, 1]).
      augment=ml_collections.ConfigDict(dict(
          enabled=True, shift=0,  # shift: up to this many pixels each way, border repeated (DrQ)
          crop_scale=(0.85, 1.0), crop_ratio=(0.9, 1.1),  # (1, 1), (1, 1): no resized crop
          brightness=0.2, contrast=0.2, saturation=0.2)),
      num_workers=0,        # grain worker processes (part of a run's identity).
      read_threads=-1,      # grain prefetch threads per process; -1: 0 in-process, 2 per worker (measured best on 2 cores).
      episode_cache_mb=1024,  # decoded-episode LRU per process (and per worker).
      cache_dir="",         # stats cache for read-only datasets; "" -> $WAM_CACHE_DIR or ~/.cache/wam_jax.
      shuffle_seed_offset=0,
      # The embedded MetaWorld sample generated on first use when data_dir is empty.
      metaworld=ml_collections.ConfigDict(dict(
          tasks=("drawer-close-v3", "button-press-topdown-v3", "drawer-open-v3", "door-open-v3"),
          episodes_per_task=25, video_episodes_per_task=10, resolution=64,
          # Video-only tasks added to `tasks` in metaworld_video; the camera of both sets.
          extra_video_tasks=("window-open-v3", "button-press-v3"), camera="corner4")),
  ))


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data_config()
  config.train = ml_collections.ConfigDict(dict(
      steps=2000,
      batch_size=64,
      grad_accum_steps=1,
      learning_rate=3e-4,
      warmup_steps=100,
      end_learning_rate_factor=0.05,
      weight_decay=1e-4,
      grad_clip_norm=1.0,
      b1=0.9, b2=0.95,
      ema_decay=0.0,          # 0 disables EMA params.
      compute_dtype="float32",  # "bfloat16": bf16 matmuls, fp32 params.
      log_every=25,
      grad_norm_of="",        # 'video_loss,action_loss': log each metric's gradient norm at log steps
      val_every=250,
      val_batches=4,
      ckpt_every=250,
      keep_last=3,
      keep_every=0,           # also keep every Nth step forever (0: off).
      summary_every=500,      # image summaries: input frames (and predicted frames, for families that make them).
      init_from="",           # params of another run to start from (fine-tuning).
      init_from_map="",       # 'src_prefix=dst_prefix,...': rename its param paths first ('=vlm/': all under vlm/)
      # Rerunning in a workdir that holds checkpoints compares the config with theirs: a change
      # to a field that changes the run (model, data, optimizer, steps, seed) is an error unless
      # listed here, comma-separated ("train.steps,train.learning_rate"; "*": any field).
      allow_changes="",
      matmul_peak_gflops=0.0,  # 0: measure the CPU peak once and cache it.
      # XLA/libtpu options for compiling the train and eval steps, per platform of the mesh's
      # devices ({"tpu": {"xla_tpu_...": False}}); only the running platform's are passed (XLA
      # rejects another platform's). A layout choice: resuming with other options is allowed.
      compiler_options=ml_collections.ConfigDict({"cpu": {}, "gpu": {}, "tpu": {}}),
  ))
  config.mesh = ml_collections.ConfigDict(dict(
      shape=(-1, 1, 1),       # (data, fsdp, tensor); -1 takes the remaining devices.
      rules_name="fsdp",      # named logical-axis rule table (wam_jax/training/sharding.py).
  ))
  config.eval = ml_collections.ConfigDict(dict(
      tasks=(),               # () -> the training tasks of the embedded MetaWorld sample.
      episodes_per_task=10,
      seed_offset=100_000,    # eval seeds are disjoint from generation seeds.
      max_steps=200,
      execute_steps=4,        # actions executed per predicted chunk.
      temporal_ensemble=False,
      num_workers=1,
      num_videos=2,
      at_end=False,           # experiments/train.py evaluates the final checkpoint closed loop.
  ))
  return config
