# GPT-2 1.5B on OpenWebText with Muon on the blocks' weight matrices and AdamW on the rest (muon.py).
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_xl_muon.py      (DDP: 80 GB GPUs; FSDP is refused)
include("parts/gpt2_xl.py")   # model, data, batch, schedule

out_dir = "out-gpt2-xl-muon"
wandb_run_name = "gpt2-xl-muon"

optimizer_name = "muon"
# Hyperparameters' source: with muon_adjust_lr_fn="match_rms_adamw" (train.py's default) AdamW's lr and weight
# decay carry over (as in train_gpt2_large_muon.py); here those of train_gpt2_xl_adam.py, itself 774M's lr x 0.8
# (no paper or upstream value at this size). Untuned at this size.
learning_rate = 1.6e-4               # = train_gpt2_xl_adam.py
