"""SST: Single-Stream Temporal Action Proposals, the query-agnostic comparator.

Buch, Escorcia, Shen, Ghanem and Niebles, "SST: Single-Stream Temporal Action
Proposals", CVPR 2017 (official code: github.com/shyamal-b/sst, Theano/Lasagne).
Written from the facts below; no code of these repositories is reused.

    reference [B, Lr, D]  (the query is validated, then never read)
      -> padded steps zeroed
      -> stacked causal GRUs (forward only), dropout after each   h [B, Lr, H]
      -> Dense(K) at every step t: logits of the K segments        [B, Lr, K]
         of lengths 1..K ENDING at t (end-indexed)
      -> `candidates.from_end_indexed`: start-indexed grid         [B, Lr, K]

Output: ``candidate_scores`` (logits; the sigmoid is SST's confidence) and
``candidate_mask`` (`candidates.candidate_mask`): entry (s, k) is the segment
[s, s + k + 1). The prediction is the best valid candidate (`candidates.best_candidate`);
the training loss is `losses.proposal_cross_entropy`. SST never sees the query, so its
score measures how much of the benchmark an "is there an action here?" detector
solves without knowing which action is asked for.

What the sources say (and where it was read)
--------------------------------------------

The paper's own text was reachable here only up to its introduction (stored copies
of the CVPR paper at fdocuments.net): a network that runs once, in a single stream,
over a long untrimmed video, with no division into overlapping windows. Everything
else below is from code:

* The authors' model (shyamal-b/sst, ``code/sst/model.py``, ``SSTSequenceEncoder``):
  a stack of ``depth`` Lasagne ``GRULayer``s of ``width`` units over the visual
  encoder's features, a ``DropoutLayer(p=dropout)`` after each recurrent layer when
  ``dropout`` > 0, then ONE dense layer with a sigmoid giving ``num_proposals``
  confidences per time step, output [videos, L, K]. Constructor defaults: depth 2,
  width 512, input size 500 (the PCA-reduced C3D features the benchmark uses too),
  dropout 0 (no dropout layers), gradient clipping 100 (``grad_clipping`` of each
  GRU layer), ``num_proposals`` 16.
* The proposals (same repository, ``code/sst/utils.py``, ``get_segments``): output j
  of step i is the segment covering frames [delta (i - j - 1), delta i], i.e. the
  j + 1 time steps that end with step i; delta = 16 frames per step; proposals
  reaching before the start of the video are dropped. Hence the end-indexed grid.
* The authors' demo script ``generate_sst_props.py`` (a copy found in the code index
  without its repository name; it loads the official ``sst.model``): its default
  pre-trained THUMOS'14 parameters are named ``sst_demo_th14_k32`` (K = 32 anchors),
  features are read with ``t_delta`` = 16, non-maximum suppression at 0.7.
* Re-implementation JaywongWang/SST-Tensorflow (``opt.py``, ``model.py``; its README
  reports recall comparable to the paper's): a MultiRNNCell of 2 GRU cells of 128
  units run by ``dynamic_rnn`` with the sequence lengths, dropout 0.3 on each cell's
  input and output, 32 anchors, a fully connected layer to one logit per anchor
  (sigmoid = confidence); loss: sigmoid cross-entropy per anchor with per-anchor
  positive and negative weights precomputed from the training set's class
  frequencies, summed over anchors and averaged over valid steps; positives by a
  tIoU threshold of 0.5; Adam 1e-3, batch 160, gradient norm clipped at 100, L2 1e-5;
  sampled training streams of 2048 / 16 + 1 steps (option ``sample_len``).
* Re-implementation ranjaykrishna/SST (``models.py``, ``train.py``, PyTorch): a
  2-layer GRU of 512 units over 500-d C3D features, a linear layer to K sigmoid
  scores; weighted binary cross-entropy where positives weigh the share of
  negatives and negatives the share of positives; positives above IoU 0.5.

So the sources agree on: a forward (causal) GRU stack, 2 layers, one linear layer to
K logits per step, sigmoid confidences for segments ending at the step, a weighted
binary cross-entropy that balances positives and negatives, positives above IoU 0.5.
They differ on the width (512 in the authors' code and ranjaykrishna's, 128 in
JaywongWang's) and on dropout (0 in the authors' code and in ranjaykrishna's training
script, whose model class defaults to 0.2 between layers; 0.3 in JaywongWang's).

Choices made here
-----------------

* Sizes: 2 layers of 128 units with dropout 0.3 (JaywongWang's, a re-implementation
  whose README reports recall comparable to the paper's). Why not the authors' 512
  units: on this project's reference machine (2 CPU cores) a 512-unit stack costs
  about 16 times the recurrent work and would make the 1000-step comparator run
  take hours; the comparator's limit is that it never reads the query, not its
  width. The authors' sizes are ``--config.model.hidden_dim=512
  --config.model.dropout=0``. K = 32 (the
  demo's parameters and JaywongWang's, and the benchmark's segments are 1-32 features
  long).
* The GRU is flax's `nn.GRUCell` (its default initializers: LeCun-normal input
  kernels, orthogonal recurrent kernels, zero biases): r = sigmoid(W_ir x + b_ir +
  W_hr h), z = sigmoid(W_iz x + b_iz + W_hz h), n = tanh(W_in x + b_in + r (W_hn h +
  b_hn)), h' = (1 - z) n + z h. It applies the reset gate after the recurrent product
  (as PyTorch's GRU does; TF1's `GRUCell` applies it before). The output
  layer is Glorot-uniform with a zero bias (TF's `fully_connected` default, as in
  JaywongWang's). Gradient clipping is the harness's (global norm), not per layer.
* Dropout (when > 0) follows each GRU layer, as in the authors' code.
* The K logits are returned raw (the sigmoid belongs to the loss and to the reader),
  end-indexed scores are moved to the start-indexed grid with
  `candidates.from_end_indexed`, and entries outside the reference (end past its
  valid length) are set to 0.0 and marked False in ``candidate_mask``.
* Padding: inputs are zeroed at padded steps (`mask_steps`) and the GRUs get the
  reference lengths; the GRUs are causal, so a valid candidate, which ends at a
  valid step, never depends on padding (the zeroing also keeps NaN padding out of
  the gradients). The loss (`losses.proposal_cross_entropy`)
  counts its class weights per batch and per length (references are cropped at
  random, so training-set frequencies are not fixed); no non-maximum suppression
  (only the best proposal is used): both are the harness's, see ``configs/sst.py``.
* ``segment`` is accepted and ignored (the harness passes it to every
  candidate-scoring model), as are the query's values; the query is still checked.

Parameters at the defaults with D = 500 input features: 344,608. A GRU layer of H
units over d inputs has 3 H (d + H) + 4 H (kernels of the three input and three
recurrent projections, biases of the input projections and of W_hn): 241,664 for
the first layer (d = 500), 98,816 for the second (d = 128); the output layer
128 * 32 + 32 = 4,128. (With the authors' 512 units: 3,147,808.)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vreloc_jax.comparators import candidates
from vreloc_jax.comparators import losses
from vreloc_jax.inputs import mask_steps
from vreloc_jax.inputs import model_inputs


def sst_config() -> ml_collections.ConfigDict:
  """Returns the SST model section of the configuration (see "Choices made here")."""
  cfg = ml_collections.ConfigDict()
  cfg.num_lengths = 32  # K: candidate lengths 1..K steps (benchmark segments are 1-32 features).
  cfg.hidden_dim = 128  # GRU units per layer (JaywongWang's; the authors' code: 512).
  cfg.num_layers = 2  # Stacked GRU layers (depth=2 there; 2 in every re-implementation).
  cfg.dropout = 0.3  # After each GRU layer (JaywongWang's; the authors' code: 0).
  cfg.dtype = "float32"  # "float32"/"bfloat16" compute; params, GRU carries, scores float32.
  return cfg


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError for sizes or a dropout rate SST cannot have."""
  if cfg.num_lengths < 1 or cfg.hidden_dim < 1 or cfg.num_layers < 1:
    raise ValueError(f"sst: num_lengths, hidden_dim and num_layers must be >= 1, got "
                     f"{cfg.num_lengths}, {cfg.hidden_dim}, {cfg.num_layers}")
  if not 0.0 <= cfg.dropout < 1.0:
    raise ValueError(f"sst: dropout must be in [0, 1), got {cfg.dropout}")


class SST(nn.Module):
  """SST proposals of Buch et al. (2017) over the reference; the query is ignored.

  Attributes:
    config: the model section (`sst_config()`). A full configuration with a `model`
      field is accepted too; its `model` section is used.
  """

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, query: jax.Array, query_mask: jax.Array, reference: jax.Array,
               reference_mask: jax.Array, *, deterministic: bool,
               segment: jax.Array | None = None) -> dict[str, jax.Array]:
    """Scores every candidate segment of each reference.

    Args:
      query: [batch, len_query, D] query features (checked, not read).
      query_mask: bool[batch, len_query] (checked, not read).
      reference: [batch, len_ref, D] reference features.
      reference_mask: bool[batch, len_ref], True at valid steps.
      deterministic: disables dropout when True; otherwise (with dropout > 0) needs
        the 'dropout' rng.
      segment: int [batch, 2] ground truth, accepted and ignored.

    Returns:
      dict with
        'candidate_scores' float32 [batch, len_ref, K]: entry (s, k) is the logit of
          segment [s, s + k + 1); 0.0 where the candidate is invalid,
        'candidate_mask' bool [batch, len_ref, K]: the candidates inside the valid
          reference steps (`candidates.candidate_mask`).
    """
    del segment  # SST's output does not depend on the ground truth.
    cfg, dtype, _, reference_mask = model_inputs(self.config, query, query_mask, reference,
                                                 reference_mask)
    check_config(cfg)
    len_ref = reference.shape[1]
    lengths = reference_mask.sum(axis=1).astype(jnp.int32)  # [B]

    h = mask_steps(reference, reference_mask)  # [B, Lr, D]
    for layer in range(cfg.num_layers):
      cell = nn.GRUCell(cfg.hidden_dim, dtype=dtype, parent=None)
      h = nn.RNN(cell, name=f"gru_{layer}")(h, seq_lengths=lengths)  # [B, Lr, H]
      h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
    ending = nn.Dense(cfg.num_lengths, kernel_init=nn.initializers.xavier_uniform(),
                      dtype=dtype, name="scores")(h).astype(jnp.float32)  # [B, Lr, K]: (t, k)
    starting = candidates.from_end_indexed(ending)  # [B, Lr, K]: (s, k)
    valid = candidates.candidate_mask(lengths, len_ref, cfg.num_lengths)  # [B, Lr, K]
    return {"candidate_scores": jnp.where(valid, starting, 0.0), "candidate_mask": valid}


class SSTFamily(candidates.CandidateScoring):
  """SST in the harness: trained with its proposal cross-entropy; confidence: the sigmoid."""

  name = "sst"
  module_class = SST
  loss_name = "loss_p"

  @property
  def title(self) -> str:
    return "SST"

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    super().check(config)
    check_config(config.model)

  def candidate_loss(self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
                     ) -> jax.Array:
    return losses.proposal_cross_entropy(outputs["candidate_scores"], outputs["candidate_mask"],
                                         batch["segment"], batch["example_mask"],
                                         positive_iou=self.config.loss.positive_iou)

  def confidence(self, best: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(best)
