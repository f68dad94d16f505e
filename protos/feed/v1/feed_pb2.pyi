from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReasonKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_KIND_UNSPECIFIED: _ClassVar[ReasonKind]
    REASON_KIND_FOLLOWED_SELLER: _ClassVar[ReasonKind]
    REASON_KIND_FRIENDS_LIKED: _ClassVar[ReasonKind]
    REASON_KIND_SIMILAR_TO_LIKES: _ClassVar[ReasonKind]
    REASON_KIND_TRENDING: _ClassVar[ReasonKind]
    REASON_KIND_FRIEND_SHARED: _ClassVar[ReasonKind]
REASON_KIND_UNSPECIFIED: ReasonKind
REASON_KIND_FOLLOWED_SELLER: ReasonKind
REASON_KIND_FRIENDS_LIKED: ReasonKind
REASON_KIND_SIMILAR_TO_LIKES: ReasonKind
REASON_KIND_TRENDING: ReasonKind
REASON_KIND_FRIEND_SHARED: ReasonKind

class GetFeedRequest(_message.Message):
    __slots__ = ("user_id", "limit", "page_token", "exclude_item_ids", "include_categories", "exclude_categories", "min_price", "max_price", "max_ship_days")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MIN_PRICE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_FIELD_NUMBER: _ClassVar[int]
    MAX_SHIP_DAYS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    limit: int
    page_token: str
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    include_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_categories: _containers.RepeatedScalarFieldContainer[str]
    min_price: float
    max_price: float
    max_ship_days: int
    def __init__(self, user_id: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., include_categories: _Optional[_Iterable[str]] = ..., exclude_categories: _Optional[_Iterable[str]] = ..., min_price: _Optional[float] = ..., max_price: _Optional[float] = ..., max_ship_days: _Optional[int] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("kind", "actor_ids", "count")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_IDS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    kind: ReasonKind
    actor_ids: _containers.RepeatedScalarFieldContainer[str]
    count: int
    def __init__(self, kind: _Optional[_Union[ReasonKind, str]] = ..., actor_ids: _Optional[_Iterable[str]] = ..., count: _Optional[int] = ...) -> None: ...

class FeedItem(_message.Message):
    __slots__ = ("item_id", "seller_id", "score", "reasons", "title", "image_url", "price", "currency", "category", "ship_days", "news")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SELLER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SHIP_DAYS_FIELD_NUMBER: _ClassVar[int]
    NEWS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    seller_id: str
    score: float
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    title: str
    image_url: str
    price: float
    currency: str
    category: str
    ship_days: int
    news: bool
    def __init__(self, item_id: _Optional[str] = ..., seller_id: _Optional[str] = ..., score: _Optional[float] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., title: _Optional[str] = ..., image_url: _Optional[str] = ..., price: _Optional[float] = ..., currency: _Optional[str] = ..., category: _Optional[str] = ..., ship_days: _Optional[int] = ..., news: _Optional[bool] = ...) -> None: ...

class GetFeedResponse(_message.Message):
    __slots__ = ("items", "next_page_token", "model_version", "arm")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeedItem]
    next_page_token: str
    model_version: str
    arm: str
    def __init__(self, items: _Optional[_Iterable[_Union[FeedItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., model_version: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class UserItem(_message.Message):
    __slots__ = ("user_id", "item_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ...) -> None: ...

class UserSeller(_message.Message):
    __slots__ = ("user_id", "seller_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SELLER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    seller_id: str
    def __init__(self, user_id: _Optional[str] = ..., seller_id: _Optional[str] = ...) -> None: ...

class UserFriend(_message.Message):
    __slots__ = ("user_id", "friend_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FRIEND_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    friend_id: str
    def __init__(self, user_id: _Optional[str] = ..., friend_id: _Optional[str] = ...) -> None: ...

class ItemUpsert(_message.Message):
    __slots__ = ("item_id", "seller_id", "created_at", "stock", "price", "category", "title", "image_url", "currency", "ship_days", "feed_eligible")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SELLER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SHIP_DAYS_FIELD_NUMBER: _ClassVar[int]
    FEED_ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    seller_id: str
    created_at: float
    stock: int
    price: float
    category: str
    title: str
    image_url: str
    currency: str
    ship_days: int
    feed_eligible: bool
    def __init__(self, item_id: _Optional[str] = ..., seller_id: _Optional[str] = ..., created_at: _Optional[float] = ..., stock: _Optional[int] = ..., price: _Optional[float] = ..., category: _Optional[str] = ..., title: _Optional[str] = ..., image_url: _Optional[str] = ..., currency: _Optional[str] = ..., ship_days: _Optional[int] = ..., feed_eligible: _Optional[bool] = ...) -> None: ...

class ItemUpdate(_message.Message):
    __slots__ = ("item_id", "price", "category", "title", "image_url", "currency", "ship_days", "feed_eligible")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SHIP_DAYS_FIELD_NUMBER: _ClassVar[int]
    FEED_ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    price: float
    category: str
    title: str
    image_url: str
    currency: str
    ship_days: int
    feed_eligible: bool
    def __init__(self, item_id: _Optional[str] = ..., price: _Optional[float] = ..., category: _Optional[str] = ..., title: _Optional[str] = ..., image_url: _Optional[str] = ..., currency: _Optional[str] = ..., ship_days: _Optional[int] = ..., feed_eligible: _Optional[bool] = ...) -> None: ...

class SellerVacation(_message.Message):
    __slots__ = ("seller_id", "until")
    SELLER_ID_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    seller_id: str
    until: float
    def __init__(self, seller_id: _Optional[str] = ..., until: _Optional[float] = ...) -> None: ...

class SellerVacationEnd(_message.Message):
    __slots__ = ("seller_id",)
    SELLER_ID_FIELD_NUMBER: _ClassVar[int]
    seller_id: str
    def __init__(self, seller_id: _Optional[str] = ...) -> None: ...

class Share(_message.Message):
    __slots__ = ("user_id", "item_id", "friend_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FRIEND_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    friend_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., friend_id: _Optional[str] = ...) -> None: ...

class StockUpdate(_message.Message):
    __slots__ = ("item_id", "stock")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    stock: int
    def __init__(self, item_id: _Optional[str] = ..., stock: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "ts", "like", "unlike", "follow", "unfollow", "friend", "unfriend", "item_upsert", "stock_update", "not_interested_item", "not_interested_seller", "item_update", "seller_vacation", "seller_vacation_end", "share", "view", "click", "add_to_cart", "purchase")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    LIKE_FIELD_NUMBER: _ClassVar[int]
    UNLIKE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    UNFOLLOW_FIELD_NUMBER: _ClassVar[int]
    FRIEND_FIELD_NUMBER: _ClassVar[int]
    UNFRIEND_FIELD_NUMBER: _ClassVar[int]
    ITEM_UPSERT_FIELD_NUMBER: _ClassVar[int]
    STOCK_UPDATE_FIELD_NUMBER: _ClassVar[int]
    NOT_INTERESTED_ITEM_FIELD_NUMBER: _ClassVar[int]
    NOT_INTERESTED_SELLER_FIELD_NUMBER: _ClassVar[int]
    ITEM_UPDATE_FIELD_NUMBER: _ClassVar[int]
    SELLER_VACATION_FIELD_NUMBER: _ClassVar[int]
    SELLER_VACATION_END_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    CLICK_FIELD_NUMBER: _ClassVar[int]
    ADD_TO_CART_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    ts: float
    like: UserItem
    unlike: UserItem
    follow: UserSeller
    unfollow: UserSeller
    friend: UserFriend
    unfriend: UserFriend
    item_upsert: ItemUpsert
    stock_update: StockUpdate
    not_interested_item: UserItem
    not_interested_seller: UserSeller
    item_update: ItemUpdate
    seller_vacation: SellerVacation
    seller_vacation_end: SellerVacationEnd
    share: Share
    view: UserItem
    click: UserItem
    add_to_cart: UserItem
    purchase: UserItem
    def __init__(self, event_id: _Optional[str] = ..., ts: _Optional[float] = ..., like: _Optional[_Union[UserItem, _Mapping]] = ..., unlike: _Optional[_Union[UserItem, _Mapping]] = ..., follow: _Optional[_Union[UserSeller, _Mapping]] = ..., unfollow: _Optional[_Union[UserSeller, _Mapping]] = ..., friend: _Optional[_Union[UserFriend, _Mapping]] = ..., unfriend: _Optional[_Union[UserFriend, _Mapping]] = ..., item_upsert: _Optional[_Union[ItemUpsert, _Mapping]] = ..., stock_update: _Optional[_Union[StockUpdate, _Mapping]] = ..., not_interested_item: _Optional[_Union[UserItem, _Mapping]] = ..., not_interested_seller: _Optional[_Union[UserSeller, _Mapping]] = ..., item_update: _Optional[_Union[ItemUpdate, _Mapping]] = ..., seller_vacation: _Optional[_Union[SellerVacation, _Mapping]] = ..., seller_vacation_end: _Optional[_Union[SellerVacationEnd, _Mapping]] = ..., share: _Optional[_Union[Share, _Mapping]] = ..., view: _Optional[_Union[UserItem, _Mapping]] = ..., click: _Optional[_Union[UserItem, _Mapping]] = ..., add_to_cart: _Optional[_Union[UserItem, _Mapping]] = ..., purchase: _Optional[_Union[UserItem, _Mapping]] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("events", "min_replicas")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    min_replicas: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., min_replicas: _Optional[int] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("applied", "duplicates")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    applied: int
    duplicates: int
    def __init__(self, applied: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...
