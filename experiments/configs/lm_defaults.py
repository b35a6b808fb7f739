"""Defaults shared by the language-model configs (every key an experiment may override on the command line)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "lm"
  c.seed = 1337
  c.data_dir = ""  # empty: $TFJAX_DATA_DIR, then ~/.cache/tfjax (downloaded with checksum when online)

  c.data = ml_collections.ConfigDict()
  # a known name or a path to a text file (characters), or token shards: shards:DIR / a dir with meta.json written by
  # ./launch.sh prepare (tfjax.data.shards; memory-mapped, its own tokenizer and validation split)
  c.data.dataset = "tinyshakespeare"
  c.data.val_fraction = 0.1  # text datasets only (shards hold their own validation split)
  # a Hugging Face GPT-2 dir or a tfjax LM workdir to start from: its architecture replaces model's architecture keys,
  # its weights the initialisation, its tokenizer the data's (see tfjax.tasks.lm)
  c.init_from = ""
  c.data.seq_len = 0  # 0: the context window model.max_len

  c.model = ml_collections.ConfigDict()
  c.model.num_layers = 6
  c.model.num_heads = 6
  c.model.num_kv_heads = 0  # 0: = num_heads (multi-head); fewer: grouped-query; 1: multi-query
  c.model.emb_dim = 384
  c.model.mlp_dim = 0  # 0: 4 * emb_dim
  c.model.head_dim = 0  # 0: emb_dim // num_heads
  c.model.max_len = 256  # context window
  c.model.dropout_rate = 0.0
  c.model.attention_dropout_rate = 0.0
  # RoPE: with the baby config it reaches val loss 1.78 at 2000 steps where learned positions reach 1.88 (as nanoGPT).
  c.model.positional = "rope"  # learned | sinusoidal | rope | none
  c.model.rope_base = 10000.0
  # token embeddings times sqrt(emb_dim) (the paper's): with sinusoidal positions of amplitude 1 and embeddings of
  # std 0.02 the positions otherwise drown the tokens at first
  c.model.embed_scale = False
  c.model.norm = "layernorm"  # layernorm | rmsnorm
  c.model.norm_eps = 1e-5
  c.model.use_bias = False
  c.model.pre_ln = True
  c.model.activation = "gelu_tanh"  # GPT-2's GELU; cheaper than the exact erf GELU on CPUs. gelu|gelu_tanh|relu|swiglu
  c.model.tie_embeddings = True
  c.model.attention_impl = "auto"  # auto | xla | cudnn | reference
  # Queries in blocks of this many, each against only the keys the causal mask lets it see (0: one block; see
  # tfjax.layers.attention.dot_product_attention). 6/6/384 on 2 CPU cores: 16.1 -> 14.7 s/step; contexts <= 64: no-op.
  c.model.attention_block_size = 64
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"
  # float32 matmuls on GPUs/TPUs: default (TF32 / bfloat16 passes, fast) | high | highest (full float32); CPUs: same
  c.model.precision = "default"
  c.model.remat = "none"  # none | full | dots | dots_no_batch
  c.model.scan_layers = False

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.min_lr = 1e-4
  c.optimizer.schedule = "cosine"  # cosine | linear | constant | inverse_sqrt (peak lr·sqrt(warmup/step))
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_steps = 0  # 0: train.num_steps
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.99
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64
  c.train.num_steps = 5000
  c.train.grad_accum_steps = 1
  c.train.log_every = 10
  c.train.eval_every = 250
  c.train.eval_steps = 20  # batches per evaluation
  c.train.checkpoint_every = 250
  c.train.max_to_keep = 3
  # also keep the parameters of the lowest evaluation loss in WORKDIR/best (./launch.sh sample WORKDIR --best)
  c.train.keep_best = False
  c.train.parallel = "auto"  # auto | none | pmap | dp | fsdp
  c.train.skip_nonfinite = False
  c.train.restore_fallback = False  # restore an earlier checkpoint if the latest is unreadable
  c.train.async_checkpoint = True
  c.train.log_mfu = True
  c.train.tensorboard = True  # TensorBoard event files next to metrics.jsonl
  c.train.profile_steps = ""  # "A:B": trace steps A..B-1 with jax.profiler into WORKDIR/profile

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "\n"
  c.sample.num_tokens = 500
  c.sample.temperature = 0.8
  c.sample.top_k = 200
  c.sample.top_p = 1.0
  return c
