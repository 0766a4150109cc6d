"""lmlib: the supporting library of "Large Language Models: From Theory to Practice".

The package mirrors the book; each module implements the math of one idea and says in
its docstring which chapter teaches it.

==================  ==========================================================  =======
module              what it implements                                          chapter
==================  ==========================================================  =======
``probability``     chain rule, perplexity, n-gram LM with add-k smoothing      2.1
``embeddings``      skip-gram word2vec with negative sampling                   2.2
``rnn``             the recurrent cell h_t = tanh(W_h h_{t-1} + W_x x_t + b)    2.3
``tokenize``        character and byte-level BPE tokenizers                     3.1
``train``           the training loop (warm-up + cosine LR, clipping, AMP, DDP) 3.2, 5.2
``generate``        greedy / temperature / top-k / top-p decoding, KV cache     3.3
``attention``       softmax, scaled dot-product and multi-head attention,       4.1-4.3
                    sinusoidal positional encoding
``transformer``     layer norm, feed-forward, the pre-norm residual block       4.4
``metrics``         cross-entropy, perplexity, BLEU, ROUGE-L                    4.5, 9
``optim``           gradient descent, SGD with momentum, AdamW, Muon            4.6
``model``           GPTConfig and GPT                                           5.1
``hf``              Hugging Face bridge: export to GPT-2, SmolLM2 and MiniLM    5.3-5.5
``llama``           RMSNorm, RoPE, SwiGLU, grouped-query attention (LLaMA)      5.4
``data``            Shakespeare corpus (``char_corpus``), movie reviews, offline 5.2
``checkpoint``      atomic save/load with a sha256 digest and a format number   5.2
``sft``             chat formatting and response-only loss masks for SFT        5.6
``lora``            LoRA adapters: LoRALinear, apply_lora, merge, counts        5.7
``instruct``        a checkable instruction task, SFT loop and experiment       5.6-5.7
``verifiable``      the addition task with its checker; GRPO on it              5.8-5.10
``preference``      Bradley-Terry reward loss, DPO and its loop, log-probs      5.8, 5.10
``rl``              GRPO: group advantages, PPO clipping, k3 KL, rollout        5.9
``device``          pick CUDA / MPS / CPU                                       1
``_validate``       the argument guards every public entry point shares         --
``grading``         the checks behind the graded exercises (student kernel)     guides
==================  ==========================================================  =======

The instructor tooling (release, sandboxed grading, feedback, reports, the kernel provisioner)
is not part of lmlib: it is the sibling package beside it in the course repository
(CONTRIBUTING.md, "Layout"), which imports lmlib; lmlib never imports it, so the grading
sandbox's copy of lmlib carries no grader code.
"""

__version__ = "0.1.0"
