# GPT-2 355M on OpenWebText with AdamW: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train_adam.py config/train_gpt2_medium_adam.py
include("parts/gpt2_medium.py")   # model, data, batch, schedule

out_dir = "out-gpt2-medium-adam"
wandb_run_name = "gpt2-medium-adam"

optimizer_name = "adamw"
# betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["adamw"]; this size's own:
learning_rate = 3e-4
# min_lr: 0.05 x peak here; upstream's config used 6e-5.
