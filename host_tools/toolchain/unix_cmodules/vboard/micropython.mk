# The `_vboard` C module of our unix-port builds (modvboard.c says why).
VBOARD_MOD_DIR := $(USERMOD_DIR)
SRC_USERMOD_C += $(VBOARD_MOD_DIR)/modvboard.c
