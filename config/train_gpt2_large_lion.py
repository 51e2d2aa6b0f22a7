# GPT-2 774M on OpenWebText with Lion: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_large_lion.py
include("parts/gpt2_large.py")   # model, data, batch, schedule

out_dir = "out-gpt2-large-lion"
wandb_run_name = "gpt2-large-lion"

optimizer_name = "lion"
# betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["lion"]; this size's own:
learning_rate = 8e-5             # the Sophia paper's Lion baseline
