# GPT-2 355M on OpenWebText with Sophia-G: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train_sophiag.py config/train_gpt2_medium_sophiag.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "gpt2_medium.py")).read())   # model, data, schedule
# min_lr: 0.05 x peak here; upstream's config used 1e-5.

out_dir = "out-gpt2-medium-sophiag"
wandb_run_name = "gpt2-medium-sophiag"

optimizer_name = "sophiag"
learning_rate = 7e-4
rho = 0.08
weight_decay = 0.2
beta1 = 0.965
beta2 = 0.99
hess_interval = 10             # Hessian EMA refreshed after steps 9, 19, 29, ... on a full 480-sequence batch
