# GPT-2 124M on OpenWebText with Lion: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small_lion.py
import os
exec(open(os.path.join(os.path.dirname(__file__), "gpt2_small.py")).read())   # model, data, schedule

out_dir = "out-gpt2-small-lion"
wandb_run_name = "gpt2-small-lion"

optimizer_name = "lion"
learning_rate = 1e-4            # the Sophia paper's Lion baseline
weight_decay = 1.0             # Lion paper: 3-10x AdamW's, as its lr is several times smaller
beta1 = 0.9
beta2 = 0.99
