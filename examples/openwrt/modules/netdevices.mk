# From package/kernel/linux/modules/netdevices.mk.

NETWORK_DEVICES_MENU:=Network Devices

define KernelPackage/dummy
  SUBMENU:=$(NETWORK_DEVICES_MENU)
  TITLE:=Dummy network device
  KCONFIG:=CONFIG_DUMMY
  FILES:=$(LINUX_DIR)/drivers/net/dummy.ko
  AUTOLOAD:=$(call AutoLoad,34,dummy)
  # Like kmod-ifb's MODPARAMS.ifb:=numifbs=0: no dummy0 device unless one is asked for.
  MODPARAMS.dummy:=numdummies=0
endef

define KernelPackage/dummy/description
 The dummy network device
endef

$(eval $(call KernelPackage,dummy))
