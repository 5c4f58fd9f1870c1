# From package/kernel/linux/modules/other.mk.

OTHER_MENU:=Other modules

define KernelPackage/zram
  SUBMENU:=$(OTHER_MENU)
  TITLE:=ZRAM
  DEPENDS:=+(KERNEL_ZRAM_BACKEND_LZO||KERNEL_ZRAM_DEF_COMP_LZORLE||KERNEL_ZRAM_DEF_COMP_LZO):kmod-lib-lzo \
	+(KERNEL_ZRAM_BACKEND_LZ4||KERNEL_ZRAM_DEF_COMP_LZ4):kmod-lib-lz4 \
	+(KERNEL_ZRAM_BACKEND_LZ4HC||KERNEL_ZRAM_DEF_COMP_LZ4HC):kmod-lib-lz4hc \
	+(KERNEL_ZRAM_BACKEND_ZSTD||KERNEL_ZRAM_DEF_COMP_ZSTD):kmod-lib-zstd
  KCONFIG:= \
	CONFIG_ZSMALLOC \
	CONFIG_ZRAM \
	CONFIG_ZRAM_DEBUG=n \
	CONFIG_ZRAM_WRITEBACK=n \
	CONFIG_ZSMALLOC_STAT=n
  FILES:= \
	$(LINUX_DIR)/mm/zsmalloc.ko \
	$(LINUX_DIR)/drivers/block/zram/zram.ko
  AUTOLOAD:=$(call AutoLoad,20,zsmalloc zram)
endef

define KernelPackage/zram/description
 Compressed RAM block device support
endef

$(eval $(call KernelPackage,zram))


# The pattern of kmod-b43 and of kmod-hw-crypto-4xx (target/linux/apm821xx/modules.mk): the
# package forces CONFIG_HW_RANDOM=y, which OpenWrt merges into the kernel's .config, so adding
# the package rebuilds the kernel with the hwrng core built in. extmod refuses it (exit 28) and
# names the symbol; the package fails instead of changing the kernel.
define KernelPackage/random-timeriomem
  SUBMENU:=$(OTHER_MENU)
  TITLE:=Timer IOMEM HW Random Number Generator support
  KCONFIG:= \
	CONFIG_HW_RANDOM=y \
	CONFIG_HW_RANDOM_TIMERIOMEM
  FILES:=$(LINUX_DIR)/drivers/char/hw_random/timeriomem-rng.ko
  AUTOLOAD:=$(call AutoProbe,timeriomem-rng)
endef

$(eval $(call KernelPackage,random-timeriomem))
