# phi-1-small (350M; Gunasekar et al. 2023, "Textbooks Are All You Need") on OpenWebText: the model and
# micro-batch shared by train_phi1_small_*.py, so that runs differ only in the optimizer. model.py's phi-1
# switches: attention and MLP in parallel on one LayerNorm, rotary embeddings on 32 of each head's 64 channels
# (no learned positions), an untied output head with a bias; context 2048 (FlashAttention through SDPA on GPUs).
# Same size as transformers' PhiForCausalLM(hidden_size=1024, intermediate_size=4096, num_hidden_layers=20,
# num_attention_heads=16, partial_rotary_factor=0.5) with vocab 50304: 354,958,464 parameters (tests/test_model_phi.py).

include("gpt2_openwebtext.py")   # data, schedule, logging

# model: 20 layers, 16 heads of 64, 1024 wide, MLP 4096
n_layer = 20
n_head = 16
n_embd = 1024
block_size = 2048
bias = True                    # phi-1 has biases everywhere, the head included
parallel_block = True          # x + attn(ln(x)) + mlp(ln(x))
rotary_dim = 32                # rotary on the first 32 channels of each head (GPT-NeoX layout, base 10000)
tie_embeddings = False
scale_attn_by_inverse_layer_idx = False   # a GPT-2 (upstream Sophia) option; phi-1 does not use it

# 240 sequences x 2048 = 491,520 tokens per step, the GPT-2 runs' token batch (their 480 x 1024).
# processes x batch_size x gradient_accumulation_steps must make total_bs = 240, e.g.
#   8 GPUs x 6 x 5 (8xA100-80GB, bf16) | 8 x 3 x 10 (40GB) | 1 x 6 x 40
total_bs = 240
batch_size = 6
