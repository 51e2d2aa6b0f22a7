# GPT-2 124M on OpenWebText with Sophia-G through the Hugging Face Trainer: the hyperparameters of
# config/train_gpt2_small_sophiag.py (the paper's / upstream's), in TrainingArguments' names.
#   torchrun --standalone --nproc_per_node=8 train_hf.py config/train_hf_gpt2_small_sophiag.py
#   accelerate launch --num_processes=8 train_hf.py config/train_hf_gpt2_small_sophiag.py
dataset = "openwebtext"            # Skylion007/openwebtext from the Hub (~54 GB of cache), GPT-2 BPE offline
tokenizer = "gpt2"
num_proc = 8                       # processes for download, tokenizing and group_texts
block_size = 1024
max_eval_samples = 1600            # as train.py's eval: 200 batches of 8 sequences

n_layer = 12
n_head = 12
n_embd = 768
scale_attn_by_inverse_layer_idx = True

optimizer_name = "sophiag"
# learning rate, betas, weight decay, rho: optimizers.py's OPTIMIZER_DEFAULTS["sophiag"] (6e-4, 0.965/0.99, 0.2, 0.05)
hess_interval = 10
max_grad_norm = 1.0

# 8 processes x 12 x 5 = 480 sequences = 491,520 tokens per optimizer step (Sophia's bs)
per_device_train_batch_size = 12
gradient_accumulation_steps = 5

max_steps = 100000                 # cosine to 0.05 x peak at the last step, after 2,000 warmup steps
warmup_steps = 2000

output_dir = "out-hf-gpt2-small-sophiag"
run_name = "hf-gpt2-small-sophiag"
report_to = "wandb"
logging_steps = 10
eval_steps = 1000
save_steps = 1000
