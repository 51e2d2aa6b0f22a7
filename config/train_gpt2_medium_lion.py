# GPT-2 355M on OpenWebText with Lion: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_medium_lion.py
include("parts/gpt2_medium.py")   # model, data, batch, schedule

out_dir = "out-gpt2-medium-lion"
wandb_run_name = "gpt2-medium-lion"

optimizer_name = "lion"
# learning rate, betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["lion"] (the GPT-2 small values)
