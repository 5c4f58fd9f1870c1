# From package/kernel/linux/modules/usb.mk.

USB_MENU:=USB Support

# The test kernel has no USB: CONFIG_USB_NET_CDCETHER cannot be enabled without changing the
# kernel (its dependencies are unmet), so the package is generated empty, with OpenWrt's warning.
# kmod-usb-net is not defined here: that dependency is left out of extmod's package file.
define KernelPackage/usb-net-cdc-ether
  SUBMENU:=$(USB_MENU)
  TITLE:=Support for cdc ethernet connections
  DEPENDS:=+kmod-usb-net
  KCONFIG:=CONFIG_USB_NET_CDCETHER
  FILES:=$(LINUX_DIR)/drivers/net/usb/cdc_ether.ko
  AUTOLOAD:=$(call AutoProbe,cdc_ether)
endef

define KernelPackage/usb-net-cdc-ether/description
 Kernel support for USB CDC Ethernet devices
endef

$(eval $(call KernelPackage,usb-net-cdc-ether))
