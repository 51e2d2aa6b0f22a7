# GPT-2 124M on OpenWebText with Lion: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small_lion.py
include("parts/gpt2_small.py")   # model, data, batch, schedule

out_dir = "out-gpt2-small-lion"
wandb_run_name = "gpt2-small-lion"

optimizer_name = "lion"
# learning rate, betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["lion"] (the GPT-2 small values)
