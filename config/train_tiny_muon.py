# The tiny GPT with Muon on the blocks' matrices and AdamW on the rest (muon.py); the AdamW baseline is
# train_tiny_adam.py, whose lr and weight decay carry over through Muon's match_rms_adamw lr scaling.
#   python train.py config/train_tiny_muon.py
#   torchrun --standalone --nproc_per_node=2 train.py config/train_tiny_muon.py      (DDP; FSDP is refused)
include("parts/tiny.py")   # model, data, schedule

out_dir = "out-tiny-muon"
wandb_run_name = "tiny-muon"

optimizer_name = "muon"
# betas (AdamW's part), weight decay: optimizers.py's OPTIMIZER_DEFAULTS["muon"] (= AdamW's); muon_momentum 0.95,
# muon_adjust_lr_fn "match_rms_adamw": train.py's defaults. lr: train_tiny_adam.py's, carried over
learning_rate = 2e-3
