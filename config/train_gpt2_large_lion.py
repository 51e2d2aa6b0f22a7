# GPT-2 774M on OpenWebText with Lion: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_large_lion.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "gpt2_large.py")).read())   # model, data, schedule

out_dir = "out-gpt2-large-lion"
wandb_run_name = "gpt2-large-lion"

optimizer_name = "lion"
learning_rate = 8e-5            # the Sophia paper's Lion baseline
weight_decay = 1.0             # Lion paper: 3-10x AdamW's, as its lr is several times smaller
beta1 = 0.9
beta2 = 0.99
