# From package/kernel/linux/modules/crypto.mk.

CRYPTO_MENU:=Cryptographic API modules

define KernelPackage/crypto-hash
  TITLE:=CryptoAPI hash support
  KCONFIG:=CONFIG_CRYPTO_HASH
  FILES:=$(LINUX_DIR)/crypto/crypto_hash.ko
  AUTOLOAD:=$(call AutoLoad,02,crypto_hash,1)
  SUBMENU:=$(CRYPTO_MENU)
endef

$(eval $(call KernelPackage,crypto-hash))


define KernelPackage/crypto-crc32c
  TITLE:=CRC32c CRC module
  DEPENDS:=+kmod-crypto-hash
  KCONFIG:=CONFIG_CRYPTO_CRC32C
  FILES:= \
	$(LINUX_DIR)/crypto/crc32c_generic.ko@lt6.18 \
	$(LINUX_DIR)/crypto/crc32c-cryptoapi.ko@ge6.18
  AUTOLOAD:=$(call AutoLoad,04,crc32c_generic@lt6.18 crc32c-cryptoapi@ge6.18,1)
  SUBMENU:=$(CRYPTO_MENU)
endef

$(eval $(call KernelPackage,crypto-crc32c))
