# From package/kernel/linux/modules/block.mk.

BLOCK_MENU:=Block Devices

# CONFIG_BLK_DEV_CRYPTOLOOP no longer exists in 6.12: Kconfig ignores the `=n`, and so does the
# shim (a symbol the base config does not set already satisfies `=n`).
define KernelPackage/loop
  SUBMENU:=$(BLOCK_MENU)
  TITLE:=Loopback device support
  KCONFIG:= \
	CONFIG_BLK_DEV_LOOP \
	CONFIG_BLK_DEV_CRYPTOLOOP=n
  FILES:=$(LINUX_DIR)/drivers/block/loop.ko
  AUTOLOAD:=$(call AutoLoad,30,loop,1)
endef

define KernelPackage/loop/description
 Kernel module for loopback device support
endef

$(eval $(call KernelPackage,loop))
