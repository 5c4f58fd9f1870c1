# From package/kernel/linux/modules/usb.mk.

USB_MENU:=USB Support

# The test kernel has no USB: CONFIG_USB_NET_CDCETHER cannot be enabled without changing the
# kernel (its dependencies are unmet), so the package is generated empty, with OpenWrt's warning.
# OpenWrt's definition also has DEPENDS:=+kmod-usb-net; kmod-usb-net is not defined here, and a
# package that pulls in an undefined one cannot be selected (Makefile.shim would not build it).
define KernelPackage/usb-net-cdc-ether
  SUBMENU:=$(USB_MENU)
  TITLE:=Support for cdc ethernet connections
  KCONFIG:=CONFIG_USB_NET_CDCETHER
  FILES:=$(LINUX_DIR)/drivers/net/usb/cdc_ether.ko
  AUTOLOAD:=$(call AutoProbe,cdc_ether)
endef

define KernelPackage/usb-net-cdc-ether/description
 Kernel support for USB CDC Ethernet devices
endef

$(eval $(call KernelPackage,usb-net-cdc-ether))
