# From package/kernel/linux/modules/netsupport.mk.

NETWORK_SUPPORT_MENU:=Network Support

define KernelPackage/veth
  SUBMENU:=$(NETWORK_SUPPORT_MENU)
  TITLE:=Virtual ethernet pair device
  KCONFIG:=CONFIG_VETH
  FILES:=$(LINUX_DIR)/drivers/net/veth.ko
  AUTOLOAD:=$(call AutoLoad,30,veth)
endef

define KernelPackage/veth/description
 This device is a local ethernet tunnel. Devices are created in pairs.
endef

$(eval $(call KernelPackage,veth))


# CONFIG_NLMON is not set in the base kernel: OpenWrt would switch it on in the kernel's .config
# (a new kernel build, new vermagic); extmod builds nlmon.ko through a configuration variant
# that only the module sees.
define KernelPackage/nlmon
  SUBMENU:=$(NETWORK_SUPPORT_MENU)
  TITLE:=Virtual netlink monitoring device
  KCONFIG:=CONFIG_NLMON
  FILES:=$(LINUX_DIR)/drivers/net/nlmon.ko
  AUTOLOAD:=$(call AutoProbe,nlmon)
endef

define KernelPackage/nlmon/description
 Kernel module which adds a monitoring device for netlink.
endef

$(eval $(call KernelPackage,nlmon))
