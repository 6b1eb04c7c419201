"""The structured config. Defaults are the embedded CPU default (configs/cpu_tiny.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class IndexType(StrEnum):
    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


class KLEstimator(StrEnum):
    k1 = "k1"
    k3 = "k3"


class LossAggregation(StrEnum):
    token_mean = "token_mean"
    seq_mean = "seq_mean"


class CorpusSource(StrEnum):
    synth = "synth"
    charades = "charades"
    fig = "fig"
    didemo = "didemo"
    activitynet = "activitynet"


@dataclass
class PathsConfig:
    # Everything a run writes (corpus, index, checkpoints, results). A relative path is taken
    # from the directory the command runs in and made absolute when the config is loaded.
    workdir: str = "runs/default"
    # Where tiny models are built and cached: the user's cache directory, shared by every
    # clone, `make train`, tests' jobs and `ray job submit` on this machine.
    model_cache: str = "${oc.env:XDG_CACHE_HOME,'~/.cache'}/videosearch-r1/models"


@dataclass
class TinyEmbedderPretrainConfig:
    # The policy's count: past ~300 videos descriptions repeat (a batch may then hold a false
    # negative), but 256 videos were too few to learn which shape and motion a colour has.
    num_videos: int = 2048
    steps: int = 600
    batch_size: int = 32
    # A batch holds this many backgrounds, so most negatives share the positive's background.
    backgrounds_per_batch: int = 4
    lr: float = 1.0e-3
    warmup_steps: int = 50
    tau: float = 0.1
    # Weight of the attribute probes (colours, background, shape, motion) on both towers.
    probe_weight: float = 1.0


@dataclass
class TinyPolicyPretrainConfig:
    # Fewer videos are memorised rather than learnt (docs/experiments.md, "Tiny models").
    num_videos: int = 2048
    steps: int = 800
    batch_size: int = 8
    # Text-only rows of the trace's check per step, beside the batch_size videos: the
    # comparison needs no video, and a few SFT examples do not teach it.
    compare_batch_size: int = 4
    # Weight of the linear probes of each temporal patch's colours/shapes/motions on the
    # vision tower's output (tiny.policy_pretrain.PatchProbes): they give the tower a direct
    # signal the caption loss alone reaches late; 0 = the caption loss alone.
    probe_weight: float = 1.0
    lr: float = 1.0e-3
    warmup_steps: int = 30


@dataclass
class TinyPretrainConfig:
    """Pretraining of the tiny models, standing in for the web-scale training of the released
    Qwen3-VL models: random ones see nothing (the embedder retrieves one hub video for every
    query; the policy cannot tell colours apart). Both learn on a synthetic corpus of their
    own (model seed + 1000 and + 2000), never a run's corpus; 0 steps leaves a model random."""

    embedder: TinyEmbedderPretrainConfig = field(default_factory=TinyEmbedderPretrainConfig)
    policy: TinyPolicyPretrainConfig = field(default_factory=TinyPolicyPretrainConfig)


@dataclass
class ModelConfig:
    # A local Hugging Face directory, or "tiny": the entry points build (once) the tiny model
    # and put its directory here (tiny.build.with_tiny_models).
    policy: str = "tiny"
    embedder: str = "tiny"
    dtype: str = "float32"
    embed_instruction: str = "Represent the user's input."
    seed: int = 0
    tiny_pretrain: TinyPretrainConfig = field(default_factory=TinyPretrainConfig)


@dataclass
class SynthConfig:
    num_videos: int = 48
    queries_per_video: int = 2
    seconds: int = 12
    size: int = 64  # frame width = height, pixels
    fps: int = 4  # encoding frame rate; sampling rate is video.fps
    near_duplicate_fraction: float = 0.25
    # Shares of the videos held out (a near-duplicate pair counts as one unit); the rest train.
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    # Queries write the colour capitalised ("a Red circle ..."), which the tiny embedder
    # underweights: the FIG premise, for research on refinement (corpus/synth.py).
    capital_colours: bool = False


@dataclass
class CorpusConfig:
    # synth: generated into <workdir>/corpus. Any other: the annotation format of a corpus
    # built by `videosearch corpus build` into video_dir (checked against its queries).
    source: CorpusSource = CorpusSource.synth
    video_dir: str = ""
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class VideoConfig:
    fps: float = 1.0
    max_frames: int = 64
    # Pixel budget per frame (h*w); frames are resized to fit, keeping the aspect ratio.
    max_pixels: int = 64 * 64
    min_pixels: int = 32 * 32


@dataclass
class RetrievalConfig:
    num_shards: int = 1
    index_type: IndexType = IndexType.flat
    topk: int = 10
    ivf_nlist: int = 1024
    ivf_nprobe: int = 16
    hnsw_m: int = 32
    use_gpu: bool = False
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000


@dataclass
class SQRConfig:
    # N latent slot tokens follow <REFINE>; their final hidden states, through the refine
    # projector, are the soft query tokens (docs/design.md, "Soft tokens inside vLLM").
    num_tokens: int = 8
    # The latent policy in GRPO: sampled rollouts draw each soft token from N(mu, sigma^2 I)
    # around the refine projector's output mu, and GRPO trains the heads with PPO-clip on the
    # action's density ratio (learner.grpo.latent_loss). 0: deterministic soft tokens, heads
    # frozen in GRPO.
    latent_sigma: float = 0.0
    latent_loss_weight: float = 1.0
    latent_clip_eps: float = 0.2
    # lambda x InfoNCE of the refined query (the mean's, as in SFT) added to GRPO's loss under
    # the latent policy: the heads keep a dense retrieval signal beside the reward's.
    latent_infonce_lambda: float = 0.3
    # > 0: SFT also trains the policy's logits at the slots to name the words the shown video
    # lacks (learner.losses.slot_word_loss), so the slot states carry them for unseen queries
    # and the heads fit maps words, not memorised turns (docs/experiments.md, "slot words").
    slot_word_weight: float = 0.0
    # fit_steps > 0: after SFT the heads are fit afresh (plain Adam, the policy frozen) to map
    # each not-matched turn's slot states onto the embedder's inputs of the query words the
    # shown video lacks (learner.heads_fit). 0 keeps the heads SFT's InfoNCE left; where the text
    # already names what the video shows the fit refines worse than next (docs/experiments.md,
    # "The heads fit"). On in cpu_tiny.
    fit_steps: int = 0
    fit_lr: float = 1e-3
    fit_batch_size: int = 32
    # not-matched turns per training query the fit learns from: its first k wrong videos (SFT's
    # turn shows the first; the others are text the policy did not memorise)
    fit_turns_per_query: int = 3
    # How far the soft tokens move the query: refined = normalise(q(text) + scale * (q(text,
    # soft) - q(text, 0))), in the query encoder and in the learner's InfoNCE alike. Below 1 a
    # refinement that overshoots pushes the ground truth down less (0.5 in cpu_tiny;
    # docs/experiments.md, "the refinement's step").
    refine_scale: float = 1.0


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    # < 1 samples from the nucleus; the learner's log-probs are then of that nucleus too
    # (learner.losses.nucleus), at the cost of sorting each row's logits over the vocabulary
    top_p: float = 1.0
    max_tokens: int = 128


@dataclass
class RolloutConfig:
    group_size: int = 8
    max_turns: int = 3
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # vLLM KV cache per engine, GiB of host RAM on CPU (VLLM_CPU_KVCACHE_SPACE).
    kv_cache_gib: float = 1.0
    # Fraction of GPU memory per engine on GPU.
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    max_model_len: int = 4096
    enable_prefix_caching: bool = True
    # False: vLLM compiles the language model (torch.compile; on GPU also CUDA graphs): faster
    # decode steps for seconds more at each engine start. True: eager, for quick debugging.
    enforce_eager: bool = False
    # Tokens per KV-cache block; None: vLLM's default (128 on CPU, 16 on GPU). Prefix caching
    # reuses whole blocks only, so a soft-token capture recomputes its sequence from the last
    # full block, and the G samples of a prompt share only its full blocks.
    block_size: int | None = None
    # How GRPO's weights reach the engines: "object_store" (the learner's tensors through Ray's
    # object store), "nccl" (vLLM's weight-transfer API, a broadcast from learner rank 0 into the
    # engines' GPU memory), "gloo" (the same broadcast on CPU), "auto": nccl where CUDA is.
    weight_transport: str = "auto"


@dataclass
class RewardConfig:
    format: float = 0.5
    verification: float = 1.0
    retrieval: float = 0.5
    grounding: float = 1.0
    # Paid when an episode accepts the ground-truth video. With +-1 verdicts alone, rejecting
    # everything is the best a weak verifier can do when the top-1 is mostly wrong; worth two
    # right verdicts, finding the moment beats that (docs/experiments.md, "Episode reward").
    found: float = 2.0
    retrieval_improvement: bool = False


@dataclass
class LearnerConfig:
    zero_stage: int = 2
    lr: float = 1e-4
    grpo_lr: float | None = None  # GRPO's learning rate; None: the same as lr
    # The SQR heads' learning rate as a multiple of the stage's (its own AdamW param group).
    heads_lr_scale: float = 1.0
    # SFT warms up linearly over this fraction of its steps, then decays (cosine) to
    # sft_min_lr_ratio x lr at its last step (learner.engine.sft_schedule says why).
    sft_warmup_fraction: float = 0.05
    sft_min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    clip_eps: float = 0.2
    clip_eps_high: float = 0.2  # set above clip_eps for asymmetric clipping
    kl_beta: float = 0.01
    kl_estimator: KLEstimator = KLEstimator.k3
    loss_aggregation: LossAggregation = LossAggregation.token_mean
    # Dr. GRPO: advantages are reward - group mean, not divided by the group's std, which
    # lets the many wrong-top-1 groups (small spread) outvote the few that found the video
    # (docs/experiments.md, "GRPO's learner choices").
    std_normalize_advantages: bool = False
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    infonce_tau: float = 0.1
    infonce_lambda: float = 0.3
    # InfoNCE negatives per refined query: in SFT the split's own videos the text search ranks
    # highest, in GRPO the refined search's top results; never the rejected video. At most
    # retrieval.topk - 1.
    infonce_negatives: int = 7
    train_vision_tower: bool = False
    # Recompute each decoder layer's activations in the backward pass instead of keeping them:
    # ~1/3 more compute for far less memory (bench/learner_gpu.py measures both at 2B).
    gradient_checkpointing: bool = False
    checkpoint_every: int = 10
    keep_checkpoints: int = 3  # the newest N GRPO checkpoints stay on disk; 0 keeps all
    logprob_mismatch_warn: float = 0.05
    # Decoupled PPO (train.max_staleness >= 1): a token sampled by an older policy is weighted
    # by pi_old / pi_behaviour, capped here so one unlikely token cannot dominate the step.
    behaviour_weight_cap: float = 2.0


@dataclass
class TrainConfig:
    sft_steps: int = 30
    grpo_steps: int = 20
    queries_per_step: int = 4
    eval_split: str = "test"
    seed: int = 0
    # Fraction of the train split's videos kept out of SFT: GRPO trains on their queries alone
    # (0: both stages train on every train query).
    grpo_video_fraction: float = 0.0
    # DAPO's dynamic sampling: a group whose G episode rewards are all equal has zero advantage
    # and teaches nothing, so it is dropped and more queries are drawn until the step has
    # queries_per_step groups, at most max_query_draws x queries_per_step queries a step.
    dynamic_sampling: bool = True
    max_query_draws: int = 3
    # Asynchronous GRPO: with k >= 1 the next step's rollouts generate while the learner
    # trains, and a trajectory sampled more than k weight versions ago is dropped; 0 keeps
    # every step on-policy (generate, train, sync, in turn).
    max_staleness: int = 0
    # Keep every Nth GRPO step's turns as Parquet under <workdir>/rollouts (0: none); on a
    # long GPU run each step's file is megabytes, so raise N there.
    save_rollouts_every: int = 1


@dataclass
class ResourcesConfig:
    num_policy_workers: int = 1
    num_learner_ranks: int = 1
    gpus_per_policy_worker: float = 0.0
    gpus_per_learner_rank: float = 0.0
    gpus_per_index_shard: float = 0.0
    cpus_per_actor: float = 1.0  # policy workers, index shards, query encoder
    # Ray gives an actor as many torch/OpenMP threads as CPUs it asks for. On CPU the learner
    # gains from more; the vLLM engine does not (its ops are too small to split).
    cpus_per_learner_rank: float = 1.0
    # Ask each actor for one unit of its role's custom resource ("rollout", "learner",
    # "retrieval") as the cluster YAMLs in cluster/ advertise them per node type.
    role_resources: bool = False
    # CPU cores each role's processes are pinned to (policy workers; learner ranks; index
    # shards and query encoder), so that roles sharing one machine do not take each other's
    # cores, as disjoint GPUs keep them apart on a cluster; empty: not pinned.
    rollout_cpu_set: list[int] = field(default_factory=list)
    learner_cpu_set: list[int] = field(default_factory=list)
    retrieval_cpu_set: list[int] = field(default_factory=list)


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    sqr: SQRConfig = field(default_factory=SQRConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
