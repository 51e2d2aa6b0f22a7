# The tiny GPT of train_tiny_sophiag.py in phi-1 style, for CPU: attention and MLP in parallel, rotary on 16 of
# each head's 32 channels, an untied head with a bias. Trains in seconds on a laptop CPU.
#   python train_sophiag.py config/train_phi1_tiny_sophiag.py
include("train_tiny_sophiag.py")   # model size, data, schedule, Sophia-G settings

out_dir = "out-phi1-tiny-sophiag"
wandb_run_name = "phi1-tiny-sophiag"

bias = True
parallel_block = True
rotary_dim = 16
tie_embeddings = False
scale_attn_by_inverse_layer_idx = False
