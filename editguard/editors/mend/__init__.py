"""MEND (Mitchell et al., "Fast Model Editing at Scale", ICLR 2022): a trained hypernetwork
turns the fine-tuning gradient of an edit into a weight update.

For a linear map W (out × in) with input u and output y = W u at each token i, the gradient of a
loss L is a sum of rank-1 terms, ∇_W L = Σ_i δ_i u_iᵀ with δ_i = ∂L/∂y_i. MEND's editor network
g (one per weight shape, shared by every edited matrix of that shape, told apart by a learned
per-matrix scale and shift) maps each token's pair (u_i, δ_i) to (ũ_i, δ̃_i); the update is

    ΔW = −α · Σ_i δ̃_i ũ_iᵀ          (rank ≤ number of tokens with δ_i ≠ 0)

with a learned step α per matrix.

Modules (import from them; this package imports nothing):
  hparams   MendHparams, which matrices are edited (EditedMatrix, edited_matrices)
  network   the editor networks g and steps α (MendNetwork)
  training  the gradient pairs (u, δ), the training losses and loop (train_mend, TrainedMend)
  store     the disk cache of trained networks (safetensors + JSON, checksummed; train_and_cache)
  editor    the `mend` editor (MEND), which edits with the longest-trained cached network
  easyedit  EasyEdit's MEND hyperparameter files as MendHparams (translate_easyedit_mend)
The training data (CounterFact's train split without the suites' cases, locality sentences) is
chosen by `editguard.mend_data`, above the editors: the editor knows nothing of suites.
"""
