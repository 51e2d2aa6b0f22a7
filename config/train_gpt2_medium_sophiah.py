# GPT-2 355M on OpenWebText with Sophia-H: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_medium_sophiah.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "gpt2_medium.py")).read())   # model, data, schedule

out_dir = "out-gpt2-medium-sophiah"
wandb_run_name = "gpt2-medium-sophiah"

optimizer_name = "sophiah"
learning_rate = 7e-4
rho = 0.01                     # the paper's gamma for Sophia-H (Hutchinson estimates the Hessian itself)
weight_decay = 0.2
beta1 = 0.965
beta2 = 0.99
hess_interval = 10
