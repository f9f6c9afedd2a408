from allmrec.cf.base import CFBackbone, CFConfig, available_backbones, build_backbone, get_backbone_class, register_backbone

__all__ = ["CFBackbone", "CFConfig", "available_backbones", "build_backbone", "get_backbone_class", "register_backbone"]
