"""``PeftKaSAModule``: ``KaSAModule`` whose backbone carries Hugging Face PEFT's KaSA instead of ours (same loop,
optimizer, schedule and metrics; the regulariser is ``model._get_kasa_loss()``, which PEFT never adds by itself).

``benchmarks/quality.py`` runs it as the sweep method ``peft_kasa`` through the overlay
``{"model": {"class_path": "benchmarks.peft_kasa.PeftKaSAModule"}}``, the repository root on ``PYTHONPATH``."""

from __future__ import annotations

import torch

from kasa_lightning import AdapterLossTerms, KaSAModule


class PeftKaSAModule(KaSAModule):
    def configure_model(self, initialize: bool = True) -> None:
        if self.model is not None:
            return
        import peft

        model = self.build_backbone()
        model.train()
        a = self.adapter_config
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        cfg = peft.LoraConfig(
            r=a.r,
            lora_alpha=a.alpha,
            lora_dropout=a.dropout,
            target_modules=a.target_modules,
            modules_to_save=[m for m in a.modules_to_save if m in present] or None,
            kasa_config=peft.KasaConfig(beta=a.beta, gamma=a.gamma),
        )
        self.model = peft.get_peft_model(model, cfg)

    def _keep_trained_state(self, checkpoint: dict) -> None:
        # the PEFT model's tensors are not our adapters: keep every weight, so that a resumed run loads them all
        state = checkpoint["state_dict"]
        super()._keep_trained_state(checkpoint)
        checkpoint["state_dict"] = state
        checkpoint["kasa"]["full_state"] = True

    def regularizer(self) -> AdapterLossTerms:
        loss = self.model._get_kasa_loss()
        if not torch.is_tensor(loss):
            loss = torch.tensor(float(loss))
        zero = loss.new_zeros(())
        return AdapterLossTerms(loss=loss, l2=zero, l3=zero, per_layer={})
