# GPT-2 124M on OpenWebText with Muon on the blocks' weight matrices and AdamW on the rest (muon.py).
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small_muon.py      (DDP; FSDP is refused)
include("parts/gpt2_small.py")   # model, data, batch, schedule

out_dir = "out-gpt2-small-muon"
wandb_run_name = "gpt2-small-muon"

optimizer_name = "muon"
# Hyperparameters' source: with muon_adjust_lr_fn="match_rms_adamw" (train.py's default) Muon's update has
# AdamW's RMS, so AdamW's lr and weight decay are reused as they are (Liu et al. 2025, "Muon is Scalable for LLM
# Training", which reuses AdamW's settings this way); here those of train_gpt2_small_adam.py. Muon's momentum 0.95
# (Nesterov) and 5 Newton-Schulz steps are K. Jordan's / torch.optim.Muon's defaults. Untuned at this size.
# learning rate, betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["muon"] (= AdamW's GPT-2 small values)
