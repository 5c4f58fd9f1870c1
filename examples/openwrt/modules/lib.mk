# From package/kernel/linux/modules/lib.mk.

LIB_MENU:=Libraries

define KernelPackage/lib-crc7
  SUBMENU:=$(LIB_MENU)
  TITLE:=CRC7 support
  KCONFIG:=CONFIG_CRC7
  FILES:= \
	$(LINUX_DIR)/lib/crc7.ko@lt6.18 \
	$(LINUX_DIR)/lib/crc/crc7.ko@ge6.18
  AUTOLOAD:=$(call AutoProbe,crc7)
endef

define KernelPackage/lib-crc7/description
 Kernel module for CRC7 support
endef

$(eval $(call KernelPackage,lib-crc7))


# OpenWrt's kmod-lib-lzo also ships crypto/lzo.ko and lzo-rle.ko (CONFIG_CRYPTO_LZO); on the test
# kernel that symbol would switch on CONFIG_SGL_ALLOC in vmlinux, so this one keeps the library
# part. lzo_decompress is built into the test kernel: it gets the built-in NOTICE.
define KernelPackage/lib-lzo
  SUBMENU:=$(LIB_MENU)
  HIDDEN:=1
  TITLE:=LZO support
  KCONFIG:= \
	CONFIG_LZO_COMPRESS \
	CONFIG_LZO_DECOMPRESS
  FILES:= \
	$(LINUX_DIR)/lib/lzo/lzo_compress.ko \
	$(LINUX_DIR)/lib/lzo/lzo_decompress.ko
  AUTOLOAD:=$(call AutoProbe,lzo_compress lzo_decompress)
endef

define KernelPackage/lib-lzo/description
 Kernel module for LZO compression
endef

$(eval $(call KernelPackage,lib-lzo))


# Built into the test kernel (CONFIG_ZLIB_INFLATE=y): every FILES entry gets the NOTICE.
define KernelPackage/lib-zlib-inflate
  SUBMENU:=$(LIB_MENU)
  HIDDEN:=1
  TITLE:=Zlib support
  KCONFIG:=CONFIG_ZLIB_INFLATE
  FILES:=$(LINUX_DIR)/lib/zlib_inflate/zlib_inflate.ko
  AUTOLOAD:=$(call AutoProbe,zlib_inflate)
endef

$(eval $(call KernelPackage,lib-zlib-inflate))
