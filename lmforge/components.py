"""Importing this fills every registry with the components lmforge ships."""
import lmforge.data  # noqa: F401  sources, tokenizers
import lmforge.models  # noqa: F401  architectures
import lmforge.objectives  # noqa: F401
import lmforge.training.schedules  # noqa: F401
import lmforge.training.forge_controller  # noqa: F401  alpha controller of the forge objective (seed 000)
import lmforge.quant.bitnet  # noqa: F401  layer swap bitlinear (BitNet b1.58, seed 001)
import lmforge.quant.schedule  # noqa: F401  schedule bitnet_two_stage
import lmforge.quant.fake_quant  # noqa: F401  layer swaps fp8, fp4 (StackWise QAT, seed 004)
import lmforge.quant.qlora  # noqa: F401  layer swap nf4_lora (QLoRA, seed 004)
import lmforge.training.grad_filters  # noqa: F401  grokfast_ema, grokfast_ma (Lee et al. 2024, seed 001)
import lmforge.training.grokfast_phases  # noqa: F401  schedule grokfast_phases (seed 001's LR phases)
import lmforge.training.optim  # noqa: F401  optimizers adamw, adam, sgd, muon
