"""Thin adapters to where people already train: Lightning, the Hugging Face Trainer, TensorBoard.

Each framework lives in its own module and is imported only when that module is::

    from batchscope.integrations.lightning import NoiseScaleCallback   # pip install 'batchscope[lightning]'
    from batchscope.integrations.hf import NoiseScaleCallback          # pip install 'batchscope[hf]'
    from batchscope.integrations.tensorboard import TensorBoardCallback  # pip install 'batchscope[tensorboard]'

The measuring and deciding happen in batchscope's own packages (noise, adapt, plan); these modules
only find the right moment in each framework's loop to call them.
"""
